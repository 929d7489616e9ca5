//! The provider accounts' credit: a background round (`provider_credit`, every
//! `providers.credit_interval_ms`) reads each provider's credit where it publishes one (Vast) into
//! `gpuproxy_provider_credit_usd{provider}`, so `GpuproxyProviderCreditLow` fires before rentals
//! start failing for want of money at the provider.

use metrics::gauge;

use super::Providers;
use crate::metrics::PROVIDER_CREDIT_USD;

/// One round over every provider; an error names the providers whose credit could not be read.
pub async fn credit_round(providers: &Providers) -> Result<(), String> {
    let mut failed = Vec::new();
    for p in providers.list.iter() {
        match p.credit().await {
            Ok(Some(micros)) => {
                gauge!(PROVIDER_CREDIT_USD, "provider" => p.id().as_str()).set(micros as f64 / 1e6);
            }
            Ok(None) => {}
            Err(e) => failed.push(format!("{}: {e}", p.id().as_str())),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("credit not read: {}", failed.join("; ")))
    }
}
