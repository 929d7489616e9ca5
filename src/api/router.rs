//! Routing: path to [`Route`] (plus the one path parameter some routes take), which methods each
//! route takes, and who may call it.

use hyper::Method;

/// Every route the API listeners serve. The label is the `route` metric label, so it must stay a
/// small fixed set (never the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Stats,
    OpenApi,
    /// Only when `server.debug_routes` is on.
    DebugSleep,
    AuthToken,
    Account,
    AdminAccounts,
    AdminAccount,
    AdminAccountSuspend,
    AdminAccountResume,
    AdminAccountKeys,
    AdminKey,
    Offers,
    Instances,
    Instance,
    InstanceBid,
    SshKeys,
    SshKey,
    Passthrough,
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// Any valid key or token.
    User,
    /// Keys (and their tokens) with the `admin` scope.
    Admin,
}

impl Route {
    pub const ALL: [Route; 20] = [
        Route::Health,
        Route::Ready,
        Route::Stats,
        Route::OpenApi,
        Route::DebugSleep,
        Route::AuthToken,
        Route::Account,
        Route::AdminAccounts,
        Route::AdminAccount,
        Route::AdminAccountSuspend,
        Route::AdminAccountResume,
        Route::AdminAccountKeys,
        Route::AdminKey,
        Route::Offers,
        Route::Instances,
        Route::Instance,
        Route::InstanceBid,
        Route::SshKeys,
        Route::SshKey,
        Route::Passthrough,
    ];

    /// Every route's label, in `Route as usize` order, then `unmatched` for paths no route takes.
    pub fn metric_labels() -> Vec<&'static str> {
        let mut v: Vec<_> = Route::ALL.iter().map(|r| r.label()).collect();
        v.push("unmatched");
        v
    }

    /// The route for a path, and its parameter (an account id or name, a key's public id) still
    /// percent-encoded.
    pub fn of(path: &str) -> Option<(Route, Option<&str>)> {
        let plain = match path {
            "/health" => Some(Route::Health),
            "/ready" => Some(Route::Ready),
            "/stats" => Some(Route::Stats),
            "/openapi.json" => Some(Route::OpenApi),
            "/debug/sleep" => Some(Route::DebugSleep),
            "/v1/auth/token" => Some(Route::AuthToken),
            "/v1/account" => Some(Route::Account),
            "/v1/admin/accounts" => Some(Route::AdminAccounts),
            "/v1/offers" => Some(Route::Offers),
            "/v1/instances" => Some(Route::Instances),
            "/v1/ssh-keys" => Some(Route::SshKeys),
            _ => None,
        };
        if let Some(r) = plain {
            return Some((r, None));
        }
        if let Some(rest) = path.strip_prefix("/v1/admin/accounts/") {
            let (param, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let route = match tail {
                "" => Route::AdminAccount,
                "suspend" => Route::AdminAccountSuspend,
                "resume" => Route::AdminAccountResume,
                "keys" => Route::AdminAccountKeys,
                _ => return None,
            };
            return (!param.is_empty()).then_some((route, Some(param)));
        }
        if let Some(rest) = path.strip_prefix("/v1/providers/") {
            return rest
                .split_once('/')
                .filter(|(p, r)| !p.is_empty() && !r.is_empty())
                .map(|_| (Route::Passthrough, Some(rest)));
        }
        if let Some(rest) = path.strip_prefix("/v1/instances/") {
            let (id, route) = match rest.split_once('/') {
                None => (rest, Route::Instance),
                Some((id, "bid")) => (id, Route::InstanceBid),
                Some(_) => return None,
            };
            return (!id.is_empty()).then_some((route, Some(id)));
        }
        if let Some(id) = path.strip_prefix("/v1/ssh-keys/") {
            return (!id.is_empty() && !id.contains('/')).then_some((Route::SshKey, Some(id)));
        }
        if let Some(id) = path.strip_prefix("/v1/admin/keys/") {
            return (!id.is_empty() && !id.contains('/')).then_some((Route::AdminKey, Some(id)));
        }
        None
    }

    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Stats => "/stats",
            Route::OpenApi => "/openapi.json",
            Route::DebugSleep => "/debug/sleep",
            Route::AuthToken => "/v1/auth/token",
            Route::Account => "/v1/account",
            Route::AdminAccounts => "/v1/admin/accounts",
            Route::AdminAccount => "/v1/admin/accounts/{account}",
            Route::AdminAccountSuspend => "/v1/admin/accounts/{account}/suspend",
            Route::AdminAccountResume => "/v1/admin/accounts/{account}/resume",
            Route::AdminAccountKeys => "/v1/admin/accounts/{account}/keys",
            Route::AdminKey => "/v1/admin/keys/{public_id}",
            Route::Offers => "/v1/offers",
            Route::Instances => "/v1/instances",
            Route::Instance => "/v1/instances/{id}",
            Route::InstanceBid => "/v1/instances/{id}/bid",
            Route::SshKeys => "/v1/ssh-keys",
            Route::SshKey => "/v1/ssh-keys/{id}",
            Route::Passthrough => "/v1/providers/{provider}/{path}",
        }
    }

    pub fn methods(self) -> &'static [Method] {
        match self {
            Route::Health
            | Route::Ready
            | Route::Stats
            | Route::OpenApi
            | Route::DebugSleep
            | Route::Account
            | Route::Offers
            | Route::AdminAccount => &[Method::GET],
            Route::AuthToken | Route::AdminAccountSuspend | Route::AdminAccountResume => {
                &[Method::POST]
            }
            Route::AdminAccounts | Route::AdminAccountKeys => &[Method::GET, Method::POST],
            Route::AdminKey | Route::Instance => &[Method::GET, Method::DELETE],
            Route::Instances | Route::SshKeys => &[Method::GET, Method::POST],
            Route::InstanceBid => &[Method::PUT],
            Route::SshKey => &[Method::DELETE],
            Route::Passthrough => &[Method::GET, Method::POST, Method::PUT, Method::DELETE],
        }
    }

    pub fn access(self) -> Access {
        match self {
            Route::Health | Route::Ready | Route::Stats | Route::OpenApi | Route::DebugSleep => {
                Access::Public
            }
            Route::AuthToken
            | Route::Account
            | Route::Offers
            | Route::Instances
            | Route::Instance
            | Route::InstanceBid
            | Route::SshKeys
            | Route::SshKey
            | Route::Passthrough => Access::User,
            Route::AdminAccounts
            | Route::AdminAccount
            | Route::AdminAccountSuspend
            | Route::AdminAccountResume
            | Route::AdminAccountKeys
            | Route::AdminKey => Access::Admin,
        }
    }

    /// Liveness and readiness stay answerable for probes whatever a client address has spent.
    pub fn rate_limited(self) -> bool {
        !matches!(self, Route::Health | Route::Ready)
    }

    pub fn allows(self, m: &Method) -> bool {
        super::method_allowed(self.methods(), m)
    }

    /// For the `Allow` header of a 405.
    pub fn allowed(self) -> Vec<Method> {
        let mut v = self.methods().to_vec();
        if v.contains(&Method::GET) {
            v.push(Method::HEAD);
        }
        v
    }
}

pub use crate::types::text::{percent_decode, percent_encode};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_with_parameters() {
        assert_eq!(Route::of("/health"), Some((Route::Health, None)));
        assert_eq!(
            Route::of("/v1/admin/accounts/acme%20co/keys"),
            Some((Route::AdminAccountKeys, Some("acme%20co")))
        );
        assert_eq!(
            Route::of("/v1/admin/accounts/7"),
            Some((Route::AdminAccount, Some("7")))
        );
        assert_eq!(Route::of("/v1/admin/accounts/"), None);
        assert_eq!(Route::of("/v1/admin/accounts/7/other"), None);
        assert_eq!(
            Route::of("/v1/admin/keys/AAAAAAAAAAAA"),
            Some((Route::AdminKey, Some("AAAAAAAAAAAA")))
        );
        assert_eq!(Route::of("/v1/admin/keys/a/b"), None);
        assert_eq!(
            Route::of("/v1/instances/abc/bid"),
            Some((Route::InstanceBid, Some("abc")))
        );
        assert_eq!(Route::of("/v1/instances/abc/other"), None);
        assert_eq!(Route::of("/v1/instances//bid"), None);
        assert_eq!(
            Route::of("/v1/ssh-keys/sshk_1"),
            Some((Route::SshKey, Some("sshk_1")))
        );
        assert_eq!(percent_decode("acme%20co").as_deref(), Some("acme co"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn every_route_has_a_label_and_methods() {
        for (i, r) in Route::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "Route::ALL is in declaration order");
            assert!(r.label().starts_with('/'));
            assert!(!r.methods().is_empty());
        }
    }
}
