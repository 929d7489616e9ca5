//! The normalized model both providers map into: [`Offer`], and the lenient readers the
//! normalizers share (numbers that arrive as strings, ids that are ints or strings, locations that
//! come as "Region, CC", a bare country name, or null).

use serde::{Deserialize, Serialize};

pub use crate::types::ProviderId;
use serde_json::Value;

/// One rentable configuration, comparable across providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Offer {
    /// Names exactly one rentable configuration, everything renting needs:
    /// `vastai:<offer id>` (on demand), `vastai:<offer id>:bid` (interruptible, at a bid), or
    /// `ionet:<cards>x<hardware deploy id>@<location>` (io.net lists one hardware type once per
    /// card count and location, each at its own price).
    pub id: String,
    pub provider: ProviderId,
    /// Canonical model (see `gpu`), what filters match on.
    pub gpu_model: String,
    /// The provider's own spelling, for humans comparing with the provider's console.
    pub provider_gpu_name: String,
    pub gpu_count: u32,
    pub gpu_memory_gb: f64,
    /// USD per hour for the whole offer: on Vast.ai the compute price plus the storage for the
    /// disk size asked for (`disk_gb`); on io.net the configuration's price.
    pub price_per_hour: f64,
    pub price_per_gpu_hour: f64,
    /// CPU cores and RAM the renter gets (Vast reports the host's; this is the renter's share).
    pub cpu_cores: Option<f64>,
    pub ram_gb: Option<f64>,
    pub disk_gb: Option<f64>,
    /// ISO 3166-1 alpha-2, when the provider says where the machine is.
    pub country: Option<String>,
    pub region: Option<String>,
    /// 0–1 where the provider measures it (Vast.ai); io.net publishes none.
    pub reliability: Option<f64>,
    /// Priced as a bid that can be outbid (Vast.ai "interruptible").
    pub interruptible: bool,
    /// The lowest bid plus the storage (USD/h): what the offer costs at its minimum bid.
    pub min_bid_per_hour: Option<f64>,
    /// The part of the price that is the disk (Vast prices storage by `disk_gb`; billed in
    /// every state). A rental's `bid_per_hour` is the compute part: price = bid + this.
    #[serde(default)]
    pub storage_per_hour: f64,
    /// USD per GB sent / received, where the provider bills traffic (Vast `inet_up_cost` /
    /// `inet_down_cost`, charge items `bwu`/`bwd`): not in `price_per_hour`, billed as used.
    #[serde(default)]
    pub upload_usd_per_gb: Option<f64>,
    #[serde(default)]
    pub download_usd_per_gb: Option<f64>,
    pub available: bool,
    /// Ports the machine can map to the instance directly (Vast `direct_port_count`); not
    /// published elsewhere.
    #[serde(default)]
    pub direct_ports: Option<u32>,
    /// The host machine (Vast `machine_id`): a volume lives on one machine, and only offers on
    /// it can attach it. Not published elsewhere.
    #[serde(default)]
    pub machine_id: Option<String>,
}

/// What an offer must be: the filters of `GET /v1/offers` and of a rental by `spec`, in one
/// place so both choose the same offers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OfferFilter {
    /// Canonical model or family (see `gpu`).
    pub gpu: Option<String>,
    pub min_gpus: Option<u32>,
    pub max_gpus: Option<u32>,
    pub min_gpu_memory_gb: Option<f64>,
    /// USD/h for the whole offer.
    pub max_price: Option<f64>,
    pub max_price_per_gpu: Option<f64>,
    /// ISO 3166-1 alpha-2 codes, upper case.
    pub countries: Option<Vec<String>>,
    pub interruptible: bool,
    pub include_unavailable: bool,
    /// 0–1; an offer without a figure (io.net) does not pass a minimum.
    pub min_reliability: Option<f64>,
    /// Direct ports the offer can map; an offer without a figure (io.net) does not pass.
    pub min_direct_ports: Option<u32>,
}

impl OfferFilter {
    pub fn matches(&self, o: &Offer) -> bool {
        (self.include_unavailable || o.available)
            && o.interruptible == self.interruptible
            && self
                .gpu
                .as_ref()
                .is_none_or(|g| super::gpu::matches(g, &o.gpu_model))
            && self.min_gpus.is_none_or(|n| o.gpu_count >= n)
            && self.max_gpus.is_none_or(|n| o.gpu_count <= n)
            && self
                .min_gpu_memory_gb
                .is_none_or(|m| o.gpu_memory_gb + 0.05 >= m)
            && self.max_price.is_none_or(|m| o.price_per_hour <= m)
            && self
                .max_price_per_gpu
                .is_none_or(|m| o.price_per_gpu_hour <= m)
            && self.countries.as_ref().is_none_or(|cs| {
                o.country
                    .as_ref()
                    .is_some_and(|c| cs.iter().any(|x| x == c))
            })
            && self
                .min_reliability
                .is_none_or(|m| o.reliability.is_some_and(|r| r >= m))
            && self
                .min_direct_ports
                .is_none_or(|m| o.direct_ports.is_some_and(|d| d >= m))
    }
}

/// One part of one line of a provider's bill for one of its instances (Vast writes a line per
/// instance and period with nested items: `gpu`, `disk`, `bwu` upload, `bwd` download, ...;
/// docs/providers.md, "Charges").
#[derive(Debug, Clone, PartialEq)]
pub struct Charge {
    pub provider_instance_id: String,
    /// The item's type as the provider names it (`gpu`, `disk`, `bwu`, `bwd`, ...), or `total`
    /// for a line without items.
    pub item: String,
    /// The period billed, epoch seconds.
    pub start: f64,
    pub end: f64,
    pub description: String,
    /// Millionths of a USD, read from the provider's decimal without a float in between.
    pub amount_micros: i64,
}

impl Charge {
    /// Names the item across fetches (providers give lines no id; a running instance's line
    /// grows from one fetch to the next, keeping its start).
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.provider_instance_id, self.start, self.item, self.description
        )
    }

    /// What the item is billed for, as the drift report groups it.
    pub fn kind(item: &str) -> &'static str {
        match item {
            "gpu" | "compute" => "gpu",
            "disk" | "storage" => "disk",
            "bwu" | "bwd" | "bandwidth" => "bandwidth",
            "total" => "total",
            _ => "other",
        }
    }
}

/// A decimal amount (a JSON number or numeric string, as the provider wrote it) in millionths,
/// rounded half away from zero at the seventh decimal; `None` for anything else. Digits are read
/// as text, so `0.1` is exactly 100,000.
pub fn micros(v: Option<&Value>) -> Option<i64> {
    let text = match v? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    let (neg, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    if digits.contains(['e', 'E']) {
        // exponent form (serde_json writes very small or large floats so): rare enough to round
        let x: f64 = text.parse().ok()?;
        return x.is_finite().then(|| (x * 1e6).round() as i64);
    }
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut six = [b'0'; 6];
    for (d, s) in six.iter_mut().zip(frac.bytes()) {
        *d = s;
    }
    let part: i64 = std::str::from_utf8(&six).ok()?.parse().ok()?;
    let up = i64::from(frac.as_bytes().get(6).is_some_and(|d| *d >= b'5'));
    let m = whole.checked_mul(1_000_000)?.checked_add(part + up)?;
    Some(if neg { -m } else { m })
}

/// Disk sizes (GB) offer searches are made for: a query's `disk_gb` is rounded up to one of
/// these (the usual sizes are steps themselves), so one tenant trying every size from 1 to
/// 100,000 makes 13 upstream searches, not 100,000 (each also a cache entry); prices are then
/// scaled to the size asked ([`Offer::at_disk`]).
pub const DISK_STEPS: [u32; 13] = [
    10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// The disk size a search for `gb` is made for.
pub fn disk_bucket(gb: u32) -> u32 {
    DISK_STEPS
        .into_iter()
        .find(|s| *s >= gb)
        .unwrap_or(DISK_STEPS[DISK_STEPS.len() - 1])
}

impl Offer {
    /// An available on-demand RTX 4090 offer in the US, for unit tests.
    #[cfg(test)]
    pub fn sample(id: &str, price: f64, gpus: u32, rel: Option<f64>) -> Offer {
        Offer {
            id: id.into(),
            provider: ProviderId::register("vastai").unwrap(),
            gpu_model: "RTX 4090".into(),
            provider_gpu_name: "RTX 4090".into(),
            gpu_count: gpus,
            gpu_memory_gb: 24.0,
            price_per_hour: price,
            price_per_gpu_hour: price / f64::from(gpus),
            cpu_cores: None,
            ram_gb: None,
            disk_gb: None,
            country: Some("US".into()),
            region: None,
            reliability: rel,
            interruptible: false,
            min_bid_per_hour: None,
            storage_per_hour: 0.0,
            upload_usd_per_gb: None,
            download_usd_per_gb: None,
            available: true,
            direct_ports: None,
            machine_id: None,
        }
    }

    /// This offer, priced for `priced_gb` of disk, as it costs with `asked_gb`: the storage part
    /// (Vast bills it per GB) scales, the rest does not.
    pub fn at_disk(&self, asked_gb: u32, priced_gb: u32) -> Offer {
        if asked_gb == priced_gb || priced_gb == 0 || self.storage_per_hour == 0.0 {
            return self.clone();
        }
        let storage = self.storage_per_hour * f64::from(asked_gb) / f64::from(priced_gb);
        let delta = storage - self.storage_per_hour;
        // the precision the normalizers give prices
        let price = round_to(self.price_per_hour + delta, 4);
        Offer {
            price_per_hour: price,
            price_per_gpu_hour: round_to(price / f64::from(self.gpu_count.max(1)), 4),
            min_bid_per_hour: self.min_bid_per_hour.map(|b| round_to(b + delta, 4)),
            storage_per_hour: round_to(storage, 6),
            ..self.clone()
        }
    }
}

/// Instance status, mapped from both providers into one set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Provisioning,
    Running,
    Stopped,
    /// An interruptible (bid) instance that was outbid: stopped by the provider, still billing
    /// its disk, resumed by a higher bid.
    Interrupted,
    /// Paused with its memory (Vast `frozen`): still bills the GPU.
    Frozen,
    /// A state the client does not know (an io.net status outside the published enum, a Vast
    /// `actual_status` not in its docs), or a host reported offline/unknown: billed, reported,
    /// never read as a failed start.
    Unknown,
    Failed,
    Terminating,
    Terminated,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Provisioning => "provisioning",
            InstanceStatus::Running => "running",
            InstanceStatus::Stopped => "stopped",
            InstanceStatus::Interrupted => "interrupted",
            InstanceStatus::Frozen => "frozen",
            InstanceStatus::Unknown => "unknown",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Terminating => "terminating",
            InstanceStatus::Terminated => "terminated",
        }
    }

    /// Still costs money (or may again).
    pub fn is_open(self) -> bool {
        !matches!(self, InstanceStatus::Failed | InstanceStatus::Terminated)
    }
}

/// How to reach an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Ssh {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// An instance as the provider reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteInstance {
    pub provider_id: String,
    /// Our instance id, read back from the Vast label / io.net deployment name.
    pub our_id: Option<String>,
    pub status: InstanceStatus,
    pub ssh: Option<Ssh>,
    /// The provider reports a state that never reaches `running` (Vast: exited, offline,
    /// unknown, a failed container create): why, as the provider put it.
    pub dead: Option<String>,
    /// Paid up front (io.net deployment details): what it cost in all so far.
    pub paid: Option<Paid>,
    /// The exposed ports as the provider maps them (SSH's own port left out).
    pub endpoints: Vec<Endpoint>,
    /// GPU utilisation (percent) as the provider last reported it (Vast `gpu_util`): what an
    /// idle policy reads. None where the provider reports none, or not now.
    pub gpu_util: Option<f64>,
}

/// What the provider says an instance paid up front cost in all (io.net `amount_paid`, in
/// micro-dollars) and for how many hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Paid {
    pub micros: i64,
    pub hours: u32,
}

impl Quote {
    /// The terms of a catalogue offer (no bids, no separately priced storage: io.net and generic
    /// providers).
    pub fn of(o: Offer) -> Quote {
        Quote {
            price_per_hour: o.price_per_hour,
            storage_per_hour: 0.0,
            min_bid: None,
            gpu_model: o.gpu_model,
            gpu_count: o.gpu_count,
            available: o.available,
            disk_gb: o.disk_gb,
            machine_id: o.machine_id,
        }
    }
}

/// An offer's current terms, fetched at rent time.
#[derive(Debug, Clone, PartialEq)]
pub struct Quote {
    /// For an interruptible offer: at its current minimum bid.
    pub price_per_hour: f64,
    /// The part of the price that is the disk, billed in every state (Vast: also while stopped
    /// or outbid); 0 where the provider prices no storage.
    pub storage_per_hour: f64,
    /// Interruptible offers: the lowest bid (compute only, as Vast's `price` takes it).
    pub min_bid: Option<f64>,
    pub gpu_model: String,
    pub gpu_count: u32,
    pub available: bool,
    /// The most disk the offer can give (GB), when the provider says: a rental asking more is
    /// refused (400 naming `disk_gb`), never silently given less.
    pub disk_gb: Option<f64>,
    /// The host machine (Vast `machine_id`), where the provider says.
    pub machine_id: Option<String>,
}

/// A provider's price for a whole paid time (io.net `GET /vmaas/price`: the total for the asked
/// hours, fees and discount included, which is what a deployment is charged), in micro-dollars
/// as the provider wrote them.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeQuote {
    pub hours: u32,
    pub total_micros: i64,
    pub fee_micros: i64,
    pub conversion_fee_micros: i64,
    pub discount_micros: i64,
}

impl TimeQuote {
    /// The total spread over the hours: the rental's price per hour (USD).
    pub fn per_hour(&self) -> f64 {
        round_to(
            self.total_micros as f64 / 1e6 / f64::from(self.hours.max(1)),
            6,
        )
    }

    /// How the ledger's event tells it.
    pub fn describe(&self) -> String {
        let usd = |m: i64| format!("{}.{:06}", m / 1_000_000, (m % 1_000_000).abs());
        format!(
            "{} USD for {} h, fees included (provider fee {}, currency conversion {}, discount {})",
            usd(self.total_micros),
            self.hours,
            usd(self.fee_micros),
            usd(self.conversion_fee_micros),
            usd(self.discount_micros)
        )
    }
}

/// What renting sends to a provider.
#[derive(Debug, Clone)]
pub struct RentRequest {
    /// Our instance id; goes into the Vast label / io.net deployment name.
    pub our_id: String,
    /// The provider's part of the offer id (`vastai:<this>`, `ionet:<this>`).
    pub offer: String,
    /// What to run (image, environment, start script, entrypoint).
    pub launch: Launch,
    pub disk_gb: u32,
    /// (name, OpenSSH public key): io.net takes them in the deploy body; Vast attaches them per
    /// instance after create (`Provider::attach_ssh_key`).
    pub ssh_keys: Vec<(String, String)>,
    /// Interruptible rentals: the bid, sent as Vast's `price`. On-demand rentals send none.
    pub bid_per_hour: Option<f64>,
    /// io.net deployments run for a fixed time.
    pub duration_hours: u32,
    pub gpu_count: u32,
    /// A volume to attach (Vast `volume_info`): its provider id and where it is mounted.
    pub volume: Option<VolumeMount>,
}

/// A volume attached at create.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeMount {
    pub provider_volume_id: String,
    pub mount_path: String,
}

/// A volume offer: disk on one machine, priced by the GB-month (Vast `search volumes`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct VolumeOffer {
    /// `vastai:<volume offer id>`.
    pub id: String,
    pub provider: ProviderId,
    /// The machine it lives on (offers with this `machine_id` can attach it).
    pub machine_id: String,
    /// Free disk (GB).
    pub free_gb: f64,
    /// USD per GB-month (a month being 720 hours, as Vast prices storage).
    pub price_per_gb_month: f64,
    pub country: Option<String>,
    pub reliability: Option<f64>,
}

/// A volume as the provider lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteVolume {
    pub provider_id: String,
    /// The name it was given (ours: our volume id).
    pub name: Option<String>,
    pub machine_id: Option<String>,
    pub size_gb: f64,
    /// Provider ids of the instances using it.
    pub instances: Vec<String>,
}

/// What an instance runs when it starts, as the renter asked for it. A provider sends each field
/// its documented way or refuses it by name (`Provider::launch_refusal`), never drops it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Launch {
    pub image: String,
    pub env: std::collections::BTreeMap<String, String>,
    /// A script run when the instance starts (Vast `onstart`, at most [`ONSTART_MAX`] chars).
    pub onstart: Option<String>,
    /// Keep the image's entrypoint and pass it these arguments (Vast runtype `args`); `None`: the
    /// SSH launch (Vast runtype `ssh`: the entrypoint is replaced, an SSH server runs).
    pub entrypoint_args: Option<Vec<String>>,
    /// A Vast template (its `hash_id`): the image, launch mode and settings it holds, `image` and
    /// the fields above applied over them.
    pub template_hash_id: Option<String>,
    /// Ports of the instance to reach from outside (Vast `-p` mappings, io.net
    /// `network_services`).
    pub ports: Vec<PortSpec>,
}

/// A port to expose: the instance's port and its protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Only these sources may reach it (IPv4 CIDRs, at most 16; io.net's `whitelist`). Left
    /// out: anyone. Vast maps ports publicly and refuses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("items" = {"type": "string", "pattern": CIDR4}))]
    pub allow_from: Option<Vec<String>>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// An IPv4 CIDR block, as the API takes them (no leading zeros; prefix 0 to 32).
pub const CIDR4: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])/(3[0-2]|[12]?[0-9])$";

/// Whether `s` is a [`CIDR4`] block.
pub fn is_cidr4(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let octets_plain = addr
        .split('.')
        .all(|o| !o.is_empty() && (o == "0" || !o.starts_with('0')));
    let len_plain = len == "0" || !len.starts_with('0');
    octets_plain
        && len_plain
        && addr.parse::<std::net::Ipv4Addr>().is_ok()
        && len.bytes().all(|b| b.is_ascii_digit())
        && len.parse::<u8>().is_ok_and(|l| l <= 32)
}

/// A host's pending price increase on a running contract (Vast's pending price increases:
/// `vastai/api/price_increase.py`): each part of the price as a multiple of what it is now
/// (`None`: that part does not change), and when the new prices would apply (the contract's
/// current end; the time until then bills at the old prices).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceIncrease {
    /// The provider's id of the pending row (what accepting or rejecting names).
    pub id: String,
    pub provider_instance_id: String,
    pub gpu: Option<f64>,
    pub storage: Option<f64>,
    pub upload: Option<f64>,
    pub download: Option<f64>,
    /// Epoch seconds.
    pub applies_at: Option<f64>,
}

impl PriceIncrease {
    /// The largest increase among its parts, in percent (0 when none rises).
    pub fn max_increase_pct(&self) -> f64 {
        [self.gpu, self.storage, self.upload, self.download]
            .into_iter()
            .flatten()
            .map(|m| (m - 1.0) * 100.0)
            .fold(0.0, f64::max)
    }
}

/// How an exposed port is reached: the provider's public address and port for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Endpoint {
    pub port: u16,
    pub protocol: Protocol,
    pub public_ip: String,
    pub public_port: u16,
}

/// Vast's limit on an `onstart` script (docs/providers.md, "Vast.ai").
pub const ONSTART_MAX: usize = 4048;

impl Launch {
    /// The first launch field this provider takes none of, by name: `onstart`, `args` (and an
    /// `entrypoint` launch), `template_hash_id`.
    pub fn vast_only_field(&self) -> Option<&'static str> {
        if self.onstart.is_some() {
            Some("onstart")
        } else if self.entrypoint_args.is_some() {
            Some("launch_mode")
        } else if self.template_hash_id.is_some() {
            Some("template_hash_id")
        } else {
            None
        }
    }
}

/// A number that may arrive as a JSON number or as a numeric string; `None` for null, absent,
/// non-finite or anything else.
pub fn num(v: Option<&Value>) -> Option<f64> {
    let n = match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }?;
    n.is_finite().then_some(n)
}

/// An id that may be an integer or a string (io.net's `deploy_id`), as a string.
pub fn id_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

pub fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

pub fn flag(v: Option<&Value>) -> Option<bool> {
    match v? {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|x| x != 0.0),
        Value::String(s) => match s.trim() {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Rounds to cents of a cent (prices) or tenths (sizes) so figures print cleanly.
pub fn round_to(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// Splits a location string into (country ISO2, region): "Alberta, CA" → (CA, Alberta);
/// "Norway" → (NO, None); "US" → (US, None); anything unrecognized → (None, the text).
pub fn location(raw: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
        return (None, None);
    };
    let (head, last) = match raw.rsplit_once(',') {
        Some((h, l)) => (Some(h.trim()).filter(|h| !h.is_empty()), l.trim()),
        None => (None, raw),
    };
    if last.len() == 2 && last.bytes().all(|b| b.is_ascii_alphabetic()) {
        return (Some(last.to_ascii_uppercase()), head.map(str::to_owned));
    }
    if let Some(cc) = country_code(last) {
        return (Some(cc.to_owned()), head.map(str::to_owned));
    }
    (None, Some(raw.to_owned()))
}

/// ISO2 for the country names older Vast.ai data carries instead of "Region, CC".
fn country_code(name: &str) -> Option<&'static str> {
    const NAMES: &[(&str, &str)] = &[
        ("united states", "US"),
        ("usa", "US"),
        ("canada", "CA"),
        ("mexico", "MX"),
        ("brazil", "BR"),
        ("united kingdom", "GB"),
        ("great britain", "GB"),
        ("ireland", "IE"),
        ("france", "FR"),
        ("germany", "DE"),
        ("the netherlands", "NL"),
        ("netherlands", "NL"),
        ("belgium", "BE"),
        ("spain", "ES"),
        ("portugal", "PT"),
        ("italy", "IT"),
        ("switzerland", "CH"),
        ("austria", "AT"),
        ("poland", "PL"),
        ("czechia", "CZ"),
        ("czech republic", "CZ"),
        ("sweden", "SE"),
        ("norway", "NO"),
        ("finland", "FI"),
        ("denmark", "DK"),
        ("iceland", "IS"),
        ("estonia", "EE"),
        ("latvia", "LV"),
        ("lithuania", "LT"),
        ("romania", "RO"),
        ("bulgaria", "BG"),
        ("hungary", "HU"),
        ("ukraine", "UA"),
        ("turkey", "TR"),
        ("israel", "IL"),
        ("united arab emirates", "AE"),
        ("india", "IN"),
        ("china", "CN"),
        ("hong kong", "HK"),
        ("taiwan", "TW"),
        ("japan", "JP"),
        ("south korea", "KR"),
        ("korea", "KR"),
        ("singapore", "SG"),
        ("vietnam", "VN"),
        ("thailand", "TH"),
        ("malaysia", "MY"),
        ("indonesia", "ID"),
        ("australia", "AU"),
        ("new zealand", "NZ"),
        ("south africa", "ZA"),
        ("argentina", "AR"),
        ("chile", "CL"),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, cc)| *cc)
}

#[cfg(test)]
mod tests {
    /// The check takes exactly what the schema's pattern describes (schemathesis sends anything
    /// the pattern allows).
    #[test]
    fn ipv4_cidrs_are_taken_as_the_pattern_says() {
        for ok in [
            "0.0.0.0/0",
            "203.0.113.0/24",
            "255.255.255.255/32",
            "10.1.2.3/8",
        ] {
            assert!(is_cidr4(ok), "{ok}");
        }
        for bad in [
            "256.0.0.0/8",
            "01.2.3.4/8",
            "1.2.3.4/33",
            "1.2.3.4/08",
            "1.2.3/8",
            "1.2.3.4",
            "::/0",
            "1.2.3.4/",
            "1.2.3.4/+8",
        ] {
            assert!(!is_cidr4(bad), "{bad}");
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn disk_sizes_share_a_few_searches_and_prices_scale_back() {
        assert_eq!(disk_bucket(1), 10);
        assert_eq!(disk_bucket(20), 20);
        assert_eq!(disk_bucket(21), 50);
        assert_eq!(disk_bucket(99_999), 100_000);
        let all: std::collections::BTreeSet<u32> = (1..=100_000).map(disk_bucket).collect();
        assert_eq!(all.len(), DISK_STEPS.len());
        let o = Offer {
            price_per_hour: 1.05,
            price_per_gpu_hour: 0.525,
            gpu_count: 2,
            storage_per_hour: 0.05,
            min_bid_per_hour: Some(0.55),
            ..Offer::sample("vastai:1", 1.0, 2, None)
        };
        let a = o.at_disk(20, 50);
        assert_eq!(a.storage_per_hour, 0.02);
        assert_eq!(a.price_per_hour, 1.02);
        assert_eq!(a.price_per_gpu_hour, 0.51);
        assert_eq!(a.min_bid_per_hour, Some(0.52));
        assert_eq!(o.at_disk(50, 50), o);
    }

    #[test]
    fn decimal_amounts_become_micros_exactly() {
        assert_eq!(micros(Some(&json!(0.1))), Some(100_000));
        assert_eq!(micros(Some(&json!(1.2345675))), Some(1_234_568));
        assert_eq!(micros(Some(&json!("12"))), Some(12_000_000));
        assert_eq!(micros(Some(&json!(-0.5))), Some(-500_000));
        assert_eq!(micros(Some(&json!(1e-7))), Some(0));
        assert_eq!(micros(Some(&json!(".25"))), Some(250_000));
        assert_eq!(micros(Some(&json!("1.2.3"))), None);
        assert_eq!(micros(Some(&json!("abc"))), None);
        assert_eq!(micros(Some(&json!(null))), None);
    }

    #[test]
    fn lenient_readers() {
        assert_eq!(num(Some(&json!(1.5))), Some(1.5));
        assert_eq!(num(Some(&json!(" 2.25 "))), Some(2.25));
        assert_eq!(num(Some(&json!(null))), None);
        assert_eq!(num(Some(&json!("n/a"))), None);
        assert_eq!(num(None), None);
        assert_eq!(id_string(Some(&json!(42))), Some("42".into()));
        assert_eq!(
            id_string(Some(&json!("8B300.240V"))),
            Some("8B300.240V".into())
        );
        assert_eq!(id_string(Some(&json!(""))), None);
        assert_eq!(flag(Some(&json!(1))), Some(true));
        assert_eq!(flag(Some(&json!("false"))), Some(false));
    }

    #[test]
    fn locations() {
        let l = |s| location(Some(s));
        assert_eq!(
            l("Alberta, CA"),
            (Some("CA".into()), Some("Alberta".into()))
        );
        assert_eq!(
            l("The Netherlands, NL"),
            (Some("NL".into()), Some("The Netherlands".into()))
        );
        assert_eq!(l("Norway"), (Some("NO".into()), None));
        assert_eq!(l("us"), (Some("US".into()), None));
        assert_eq!(
            l("Quebec, Canada"),
            (Some("CA".into()), Some("Quebec".into()))
        );
        assert_eq!(l("Somewhere odd"), (None, Some("Somewhere odd".into())));
        assert_eq!(l(", "), (None, Some(",".into())));
        assert_eq!(location(None), (None, None));
        assert_eq!(location(Some("  ")), (None, None));
    }
}
