//! State shared by every connection and handler of one daemon.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Instant;

use crate::config::Config;
use crate::conn::ConnTable;

/// Where the daemon is in its life; `/ready` answers 200 only in `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
        }
    }
}

pub struct AppState {
    pub config: Arc<Config>,
    pub started: Instant,
    pub conns: Arc<ConnTable>,
    pub limits: Arc<crate::ratelimit::RateLimits>,
    /// RLIMIT_NOFILE after raising the soft limit to the hard one (reported in `/stats`).
    pub fd_limit: u64,
    /// The account database (through PgBouncer); `None` when `DATABASE_URL` is unset, and then
    /// every authenticated route answers 503 `auth_unavailable`.
    pub db: Option<Arc<crate::accounts::Db>>,
    /// Redis; `None` when `REDIS_URL` is unset (the daemon then runs on its own caches).
    pub redis: Option<crate::cache::Redis>,
    pub auth: Arc<crate::auth::Auth>,
    /// The provider clients, and the cache of their answers (`GET /v1/offers`).
    pub providers: crate::providers::Providers,
    pub offers_cache: Arc<crate::cache::swr::SwrCache<Vec<crate::providers::Offer>>>,
    /// Renting (needs the database); `None` without `DATABASE_URL`.
    pub rentals: Option<Arc<crate::rentals::Rentals>>,
    /// The event streams' fan-out (needs the database); `None` without `DATABASE_URL`.
    pub events: Option<Arc<crate::events::hub::Hub>>,
    /// The instance agents' channels this daemon holds, and commands' routing to them.
    pub agents: Arc<crate::agents::channels::Channels>,
    phase: AtomicU8,
    /// Random per process, so request ids from several daemons behind one balancer do not collide.
    id_prefix: u32,
    id_seq: AtomicU64,
}

impl AppState {
    pub fn new(
        config: Arc<Config>,
        conns: Arc<ConnTable>,
        fd_limit: u64,
        db: Option<Arc<crate::accounts::Db>>,
        read_db: Option<Arc<crate::accounts::Db>>,
        redis: Option<crate::cache::Redis>,
    ) -> Arc<AppState> {
        let providers = crate::providers::Providers::from_config(&config);
        let offers_cache = crate::cache::swr::SwrCache::new(
            "offers",
            redis.clone(),
            crate::cache::swr::Windows {
                ttl: config.offers.cache_ttl_ms.get(),
                stale_while_revalidate: std::time::Duration::from_millis(
                    config.offers.stale_while_revalidate_ms.ms(),
                ),
                stale_if_error: config.offers.stale_if_error_ms.get(),
            },
            config.offers.cache_max_entries.get(),
        );
        let rentals = db.clone().map(|db| {
            crate::rentals::Rentals::new(
                config.clone(),
                db,
                providers.clone(),
                offers_cache.clone(),
                redis.clone(),
            )
        });
        let events = db
            .clone()
            .map(|db| crate::events::hub::Hub::new(db, redis.clone(), &config.events));
        Arc::new(AppState {
            events,
            agents: crate::agents::channels::Channels::new(
                redis.clone(),
                db.clone(),
                &config.agents,
            ),
            auth: crate::auth::Auth::new(&config, db.clone(), read_db, redis.clone()),
            providers,
            offers_cache,
            rentals,
            db,
            redis,
            limits: Arc::new(crate::ratelimit::RateLimits::new(&config.ratelimit)),
            config,
            started: Instant::now(),
            conns,
            fd_limit,
            phase: AtomicU8::new(Phase::Starting as u8),
            id_prefix: random_u32(),
            id_seq: AtomicU64::new(0),
        })
    }

    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// A fresh request id: 8 hex digits of process prefix, 12 of sequence.
    pub fn next_request_id(&self) -> String {
        let n = self.id_seq.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{:012x}", self.id_prefix, n & 0xffff_ffff_ffff)
    }
}

/// Seeds from the OS (the same source std's HashMap uses), without another dependency.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::process::id()) as u32
}
