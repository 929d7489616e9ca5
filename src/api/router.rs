//! The route table: every route declared once ([`ROUTES`]: pattern, access, whether the per-IP
//! tier applies, and a handler per method), used for matching, the 405 `Allow` header, the
//! access checks in `dispatch`, the `route` metric label and the OpenAPI document (each method
//! carries its `Op`, from which `openapi::generate` writes the document).
//!
//! A pattern is matched segment by segment: a literal matches itself, `{name}` one non-empty
//! segment, and a final `{path}` whatever non-empty rest follows (the passthrough tail). The handler gets
//! the text from the first parameter to the end of the last one, still percent-encoded (for
//! passthrough: `vastai/api/v0/...`). A new route is one entry here (with its `Op`) plus its handler.

use hyper::Method;

pub use super::call::{Access, Call, Handler, Reply};
use super::openapi::op::Op;
use super::{
    account, admin, agents, commands, events, health, instances, mcp, offers, passthrough, sshkeys,
    usage, volumes, watches, webhooks,
};

/// One route.
pub struct Route {
    /// The path pattern; also the `route` metric label and the OpenAPI path.
    pub pattern: &'static str,
    pub access: Access,
    /// The per-IP tier applies (not to liveness and readiness probes).
    pub rate_limited: bool,
    /// Served only when `server.debug_routes` is on.
    pub debug_only: bool,
    /// Per method: its handler and its documentation (the OpenAPI document is generated from
    /// these, `openapi::generate`).
    pub methods: &'static [(Method, Handler, Op)],
}

impl Route {
    /// `method` here may change something, so a `read` key is refused it: every method but GET
    /// and HEAD, except the token exchange (it changes nothing) and MCP (each tool is checked:
    /// `api::mcp`).
    pub fn changes(&self, method: &Method) -> bool {
        !matches!(*method, Method::GET | Method::HEAD)
            && !matches!(self.pattern, "/v1/auth/token" | "/mcp")
    }
}

macro_rules! later {
    ($c:ident => $body:expr) => {
        |$c: Call| Reply::Later(Box::pin(async move { $body }))
    };
}

macro_rules! now {
    ($c:ident => $body:expr) => {
        |$c: Call| Reply::now(|| $body)
    };
}

const fn route(
    pattern: &'static str,
    access: Access,
    methods: &'static [(Method, Handler, Op)],
) -> Route {
    Route {
        pattern,
        access,
        rate_limited: true,
        debug_only: false,
        methods,
    }
}

use Access::{Admin, Public, Stream, User};

/// Every route the API listeners serve, in a fixed order (the index is the metric slot).
pub static ROUTES: &[Route] = &[
    Route {
        rate_limited: false,
        ..route(
            "/health",
            Public,
            &[(
                Method::GET,
                now!(_c => Ok(health::health())),
                health::HEALTH,
            )],
        )
    },
    Route {
        rate_limited: false,
        ..route(
            "/ready",
            Public,
            &[(
                Method::GET,
                now!(c => Ok(health::ready(&c.api))),
                health::READY,
            )],
        )
    },
    route(
        "/openapi.json",
        Public,
        &[(
            Method::GET,
            now!(c => Ok(c.api.openapi.response())),
            health::OPENAPI,
        )],
    ),
    Route {
        debug_only: true,
        ..route(
            "/debug/sleep",
            Public,
            &[(
                Method::GET,
                later!(c => health::debug_sleep(c.req.uri().query()).await),
                health::DEBUG_SLEEP,
            )],
        )
    },
    route(
        "/v1/auth/token",
        User,
        &[(
            Method::POST,
            now!(c => account::token(&c.api, c.principal()?)),
            account::CREATE_TOKEN,
        )],
    ),
    route(
        "/v1/account",
        User,
        &[(
            Method::GET,
            now!(c => Ok(account::show(&c.api, c.principal()?))),
            account::GET_ACCOUNT,
        )],
    ),
    route(
        "/v1/account/keys",
        User,
        &[(
            Method::GET,
            later!(c => account::keys(c).await),
            account::LIST_OWN_KEYS,
        )],
    ),
    route(
        "/v1/admin/accounts",
        Admin,
        &[
            (
                Method::GET,
                later!(c => admin::list_accounts(c).await),
                admin::ADMIN_LIST_ACCOUNTS,
            ),
            (
                Method::POST,
                later!(c => admin::create_account(c).await),
                admin::ADMIN_CREATE_ACCOUNT,
            ),
        ],
    ),
    route(
        "/v1/admin/accounts/{account}",
        Admin,
        &[
            (
                Method::GET,
                later!(c => admin::show_account(c).await),
                admin::ADMIN_GET_ACCOUNT,
            ),
            (
                Method::PATCH,
                later!(c => admin::update_account(c).await),
                admin::ADMIN_UPDATE_ACCOUNT,
            ),
        ],
    ),
    route(
        "/v1/admin/accounts/{account}/suspend",
        Admin,
        &[(
            Method::POST,
            later!(c => admin::set_account_status(c, false).await),
            admin::ADMIN_SUSPEND_ACCOUNT,
        )],
    ),
    route(
        "/v1/admin/accounts/{account}/resume",
        Admin,
        &[(
            Method::POST,
            later!(c => admin::set_account_status(c, true).await),
            admin::ADMIN_RESUME_ACCOUNT,
        )],
    ),
    route(
        "/v1/admin/accounts/{account}/keys",
        Admin,
        &[
            (
                Method::GET,
                later!(c => admin::list_keys(c).await),
                admin::ADMIN_LIST_KEYS,
            ),
            (
                Method::POST,
                later!(c => admin::create_key(c).await),
                admin::ADMIN_CREATE_KEY,
            ),
        ],
    ),
    route(
        "/v1/admin/keys/{public_id}",
        Admin,
        &[
            (
                Method::GET,
                later!(c => admin::show_key(c).await),
                admin::ADMIN_GET_KEY,
            ),
            (
                Method::PATCH,
                later!(c => admin::update_key(c).await),
                admin::ADMIN_UPDATE_KEY,
            ),
            (
                Method::DELETE,
                later!(c => admin::revoke_key(c).await),
                admin::ADMIN_REVOKE_KEY,
            ),
        ],
    ),
    route(
        "/v1/offers",
        User,
        &[(
            Method::GET,
            later!(c => offers::list(&c.api, c.req.uri().query()).await),
            offers::LIST_OFFERS,
        )],
    ),
    route(
        "/v1/admin/reconciliation",
        Admin,
        &[(
            Method::GET,
            later!(c => admin::reconciliation(c).await),
            admin::ADMIN_RECONCILIATION,
        )],
    ),
    route(
        "/v1/events",
        Stream,
        &[(
            Method::GET,
            later!(c => events::stream(c).await),
            events::STREAM_EVENTS,
        )],
    ),
    route(
        "/v1/usage",
        User,
        &[(
            Method::GET,
            later!(c => usage::mine(c).await),
            usage::GET_USAGE,
        )],
    ),
    route(
        "/v1/admin/accounts/{account}/usage",
        Admin,
        &[(
            Method::GET,
            later!(c => usage::of_account(c).await),
            admin::ADMIN_GET_USAGE,
        )],
    ),
    route(
        "/v1/instances",
        User,
        &[
            (
                Method::GET,
                later!(c => instances::list(c).await),
                instances::LIST_INSTANCES,
            ),
            (
                Method::POST,
                later!(c => instances::create(c).await),
                instances::RENT_INSTANCE,
            ),
        ],
    ),
    route(
        "/v1/instances/{id}",
        User,
        &[
            (
                Method::GET,
                later!(c => instances::show(c).await),
                instances::GET_INSTANCE,
            ),
            (
                Method::DELETE,
                later!(c => instances::destroy(c).await),
                instances::DESTROY_INSTANCE,
            ),
        ],
    ),
    route(
        "/v1/instances/{id}/bid",
        User,
        &[(
            Method::PUT,
            later!(c => instances::bid(c).await),
            instances::CHANGE_BID,
        )],
    ),
    route(
        "/v1/instances/{id}/extend",
        User,
        &[(
            Method::POST,
            later!(c => instances::extend(c).await),
            instances::EXTEND_INSTANCE,
        )],
    ),
    route(
        "/v1/instances/{id}/agent-token",
        User,
        &[(
            Method::POST,
            later!(c => agents::mint(c).await),
            agents::MINT_AGENT_TOKEN,
        )],
    ),
    route(
        "/v1/instances/{id}/commands",
        User,
        &[
            (
                Method::GET,
                later!(c => commands::list(c).await),
                commands::LIST_COMMANDS,
            ),
            (
                Method::POST,
                later!(c => commands::create(c).await),
                commands::CREATE_COMMAND,
            ),
        ],
    ),
    route(
        "/v1/instances/{id}/commands/{command_id}",
        User,
        &[(
            Method::GET,
            later!(c => commands::show(c).await),
            commands::GET_COMMAND,
        )],
    ),
    route(
        "/v1/agent/download",
        Public,
        &[(
            Method::GET,
            now!(c => agents::download(&c)),
            agents::AGENT_DOWNLOAD,
        )],
    ),
    route(
        "/v1/agent/install.sh",
        Public,
        &[(
            Method::GET,
            now!(c => agents::install_script(&c)),
            agents::AGENT_INSTALL_SCRIPT,
        )],
    ),
    route(
        "/v1/agent",
        Public,
        &[(
            Method::GET,
            later!(c => agents::channel(c).await),
            agents::AGENT_CHANNEL,
        )],
    ),
    route(
        "/v1/instances/{id}/stop",
        User,
        &[(
            Method::POST,
            later!(c => instances::set_running(c, false).await),
            instances::STOP_INSTANCE,
        )],
    ),
    route(
        "/v1/instances/{id}/start",
        User,
        &[(
            Method::POST,
            later!(c => instances::set_running(c, true).await),
            instances::START_INSTANCE,
        )],
    ),
    route(
        "/v1/ssh-keys",
        User,
        &[
            (
                Method::GET,
                later!(c => sshkeys::list(c).await),
                sshkeys::LIST_SSH_KEYS,
            ),
            (
                Method::POST,
                later!(c => sshkeys::create(c).await),
                sshkeys::ADD_SSH_KEY,
            ),
        ],
    ),
    route(
        "/v1/ssh-keys/{id}",
        User,
        &[
            (
                Method::GET,
                later!(c => sshkeys::show(c).await),
                sshkeys::GET_SSH_KEY,
            ),
            (
                Method::DELETE,
                later!(c => sshkeys::delete(c).await),
                sshkeys::DELETE_SSH_KEY,
            ),
        ],
    ),
    route(
        "/v1/volume-offers",
        User,
        &[(
            Method::GET,
            later!(c => volumes::offers(c).await),
            volumes::LIST_VOLUME_OFFERS,
        )],
    ),
    route(
        "/v1/volumes",
        User,
        &[
            (
                Method::GET,
                later!(c => volumes::list(c).await),
                volumes::LIST_VOLUMES,
            ),
            (
                Method::POST,
                later!(c => volumes::create(c).await),
                volumes::CREATE_VOLUME,
            ),
        ],
    ),
    route(
        "/v1/volumes/{id}",
        User,
        &[
            (
                Method::GET,
                later!(c => volumes::show(c).await),
                volumes::GET_VOLUME,
            ),
            (
                Method::DELETE,
                later!(c => volumes::delete(c).await),
                volumes::DELETE_VOLUME,
            ),
        ],
    ),
    route(
        "/v1/webhooks",
        User,
        &[
            (
                Method::GET,
                later!(c => webhooks::list(c).await),
                webhooks::LIST_WEBHOOKS,
            ),
            (
                Method::POST,
                later!(c => webhooks::create(c).await),
                webhooks::CREATE_WEBHOOK,
            ),
        ],
    ),
    route(
        "/v1/webhooks/{id}",
        User,
        &[
            (
                Method::GET,
                later!(c => webhooks::show(c).await),
                webhooks::GET_WEBHOOK,
            ),
            (
                Method::DELETE,
                later!(c => webhooks::delete(c).await),
                webhooks::DELETE_WEBHOOK,
            ),
        ],
    ),
    route(
        "/v1/webhooks/{id}/enable",
        User,
        &[(
            Method::POST,
            later!(c => webhooks::enable(c).await),
            webhooks::ENABLE_WEBHOOK,
        )],
    ),
    route(
        "/v1/webhooks/{id}/deliveries",
        User,
        &[(
            Method::GET,
            later!(c => webhooks::deliveries(c).await),
            webhooks::LIST_WEBHOOK_DELIVERIES,
        )],
    ),
    route(
        "/mcp",
        User,
        &[(Method::POST, later!(c => mcp::post(c).await), mcp::MCP)],
    ),
    route(
        "/v1/watches",
        User,
        &[
            (
                Method::GET,
                later!(c => watches::list(c).await),
                watches::LIST_WATCHES,
            ),
            (
                Method::POST,
                later!(c => watches::create(c).await),
                watches::CREATE_WATCH,
            ),
        ],
    ),
    route(
        "/v1/watches/{id}",
        User,
        &[
            (
                Method::GET,
                later!(c => watches::show(c).await),
                watches::GET_WATCH,
            ),
            (
                Method::DELETE,
                later!(c => watches::delete(c).await),
                watches::DELETE_WATCH,
            ),
        ],
    ),
    route(
        "/v1/providers/{provider}/{path}",
        User,
        &[
            (
                Method::GET,
                later!(c => passthrough::forward(c).await),
                passthrough::PROVIDER_GET,
            ),
            (
                Method::POST,
                later!(c => passthrough::forward(c).await),
                passthrough::PROVIDER_POST,
            ),
            (
                Method::PUT,
                later!(c => passthrough::forward(c).await),
                passthrough::PROVIDER_PUT,
            ),
            (
                Method::DELETE,
                later!(c => passthrough::forward(c).await),
                passthrough::PROVIDER_DELETE,
            ),
        ],
    ),
];

impl Route {
    /// The route for a path: its index in [`ROUTES`] (the metric slot), the route, and its
    /// parameter text (see the module header).
    pub fn of(path: &str) -> Option<(usize, &'static Route, Option<&str>)> {
        ROUTES
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.matches(path).map(|p| (i, r, p)))
    }

    /// `Some(param)` when `path` matches (the inner `None` for a pattern without parameters).
    fn matches<'p>(&self, path: &'p str) -> Option<Option<&'p str>> {
        if !self.pattern.contains('{') {
            return (path == self.pattern).then_some(None);
        }
        let mut pat = self.pattern.split('/').peekable();
        let mut rest = path;
        let (mut first, mut last) = (None::<usize>, 0usize);
        let base = path.as_ptr() as usize;
        while let Some(p) = pat.next() {
            let (seg, tail) = match rest.split_once('/') {
                Some((s, t)) => (s, Some(t)),
                None => (rest, None),
            };
            let at = seg.as_ptr() as usize - base;
            if p == "{path}" && pat.peek().is_none() {
                // the tail: whatever follows (passthrough checks its segments itself)
                if rest.is_empty() {
                    return None;
                }
                first.get_or_insert(at);
                return Some(Some(&path[first.unwrap_or(at)..]));
            }
            if p.starts_with('{') {
                if seg.is_empty() {
                    return None;
                }
                first.get_or_insert(at);
                last = at + seg.len();
            } else if p != seg {
                return None;
            }
            match (tail, pat.peek()) {
                (Some(t), Some(_)) => rest = t,
                (None, None) => return Some(first.map(|f| &path[f..last])),
                _ => return None,
            }
        }
        None
    }

    /// Every route's label, in [`ROUTES`] order, then `unmatched` for paths no route takes.
    pub fn metric_labels() -> Vec<&'static str> {
        let mut v: Vec<_> = ROUTES.iter().map(|r| r.pattern).collect();
        v.push("unmatched");
        v
    }

    /// The handler for `m` (HEAD is served by the GET handler).
    pub fn handler(&self, m: &Method) -> Option<Handler> {
        let find = |want: &Method| self.methods.iter().find(|(x, _, _)| x == want).map(|x| x.1);
        find(m).or_else(|| (*m == Method::HEAD).then(|| find(&Method::GET)).flatten())
    }

    /// For the `Allow` header of a 405.
    pub fn allowed(&self) -> Vec<Method> {
        let mut v: Vec<Method> = self.methods.iter().map(|(m, _, _)| m.clone()).collect();
        if v.contains(&Method::GET) {
            v.push(Method::HEAD);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(path: &str) -> Option<(&'static str, Option<&str>)> {
        Route::of(path).map(|(_, r, p)| (r.pattern, p))
    }

    #[test]
    fn paths_route_with_parameters() {
        assert_eq!(of("/health"), Some(("/health", None)));
        assert_eq!(
            of("/v1/admin/accounts/acme%20co/keys"),
            Some(("/v1/admin/accounts/{account}/keys", Some("acme%20co")))
        );
        assert_eq!(
            of("/v1/admin/accounts/7"),
            Some(("/v1/admin/accounts/{account}", Some("7")))
        );
        assert_eq!(of("/v1/admin/accounts/"), None);
        assert_eq!(of("/v1/admin/accounts/7/other"), None);
        assert_eq!(
            of("/v1/admin/keys/AAAAAAAAAAAA"),
            Some(("/v1/admin/keys/{public_id}", Some("AAAAAAAAAAAA")))
        );
        assert_eq!(of("/v1/admin/keys/a/b"), None);
        assert_eq!(
            of("/v1/instances/abc/bid"),
            Some(("/v1/instances/{id}/bid", Some("abc")))
        );
        assert_eq!(of("/v1/instances/abc/other"), None);
        assert_eq!(of("/v1/instances//bid"), None);
        assert_eq!(of("/v1/instances/"), None);
        assert_eq!(
            of("/v1/ssh-keys/sshk_1"),
            Some(("/v1/ssh-keys/{id}", Some("sshk_1")))
        );
        assert_eq!(
            of("/v1/providers/vastai/api/v0/bundles/"),
            Some((
                "/v1/providers/{provider}/{path}",
                Some("vastai/api/v0/bundles/")
            ))
        );
        assert_eq!(of("/v1/providers/vastai/"), None);
        assert_eq!(
            of("/v1/providers/vastai/api/v0/bundles"),
            Some((
                "/v1/providers/{provider}/{path}",
                Some("vastai/api/v0/bundles")
            ))
        );
        assert_eq!(of("/v1/providers/vastai"), None);
        assert_eq!(of("/v1/providers//x"), None);
        assert_eq!(of("/nope"), None);
        assert_eq!(of(""), None);
        assert_eq!(
            crate::types::text::percent_decode("acme%20co").as_deref(),
            Some("acme co")
        );
        assert_eq!(crate::types::text::percent_decode("bad%2"), None);
        assert_eq!(crate::types::text::percent_decode("%ff"), None);
    }

    #[test]
    fn every_route_is_declared_once_with_methods() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(r.pattern.starts_with('/'));
            assert!(seen.insert(r.pattern), "{} twice", r.pattern);
            assert!(!r.methods.is_empty());
            let ms: std::collections::HashSet<_> = r.methods.iter().map(|m| &m.0).collect();
            assert_eq!(ms.len(), r.methods.len(), "{}: a method twice", r.pattern);
        }
        assert!(
            Route::of("/v1/instances")
                .unwrap()
                .1
                .handler(&Method::HEAD)
                .is_some()
        );
        assert!(
            Route::of("/v1/instances")
                .unwrap()
                .1
                .handler(&Method::PATCH)
                .is_none()
        );
    }
}
