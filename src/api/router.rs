//! Routing: path to [`Route`], and which methods each route takes.

use hyper::Method;

/// Every route the API listeners serve. The label is the `route` metric label, so it must stay a
/// small fixed set (never the raw path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Stats,
    /// Only when `server.debug_routes` is on.
    DebugSleep,
}

impl Route {
    pub const ALL: [Route; 4] = [Route::Health, Route::Ready, Route::Stats, Route::DebugSleep];

    pub fn of(path: &str) -> Option<Route> {
        match path {
            "/health" => Some(Route::Health),
            "/ready" => Some(Route::Ready),
            "/stats" => Some(Route::Stats),
            "/debug/sleep" => Some(Route::DebugSleep),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Stats => "/stats",
            Route::DebugSleep => "/debug/sleep",
        }
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::Health | Route::Ready | Route::Stats | Route::DebugSleep => &[Method::GET],
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
