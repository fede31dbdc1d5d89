//! The one-shot commands: `lb plan`, `lb cleanup` and `lb vip put|ls|rm`. Each returns the text to print, so
//! the binary stays a thin shell and every message is a sentence an operator can act on.
//!
//! `lb plan` runs the same code `lb run` does up to the point of applying: the same sources (file, bucket, the
//! backends the kernel already forwards to), one round of health probes, the same reconciler. So "no changes"
//! from `lb plan` means a starting `lb` would write nothing.

use crate::intent::Sources;
use crate::kv;
use crate::model::Plan;
use crate::probe::probe;
use crate::reconcile::reconcile;
use crate::run::{initial_sources, load_config};
use crate::sync::Kernel;
use crate::LbError;
use futures_util::StreamExt;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_config::lb::{HealthCheckConfig, HealthCheckKind, LbNatsConfig, VipSpec};
use switchyard_runtime::nats::{NatsSettings, client_options};

/// Where `lb vip` commands find the bucket.
#[derive(Debug, Clone)]
pub struct BucketTarget {
    /// NATS server URL.
    pub url: String,
    /// Bucket name.
    pub bucket: String,
    /// The `nats.*` keys of the `--config` file, if one was given: its credentials and TLS are used for `url`.
    pub keys: Option<LbNatsConfig>,
}

/// Client settings for a one-shot command: `servers`, with the credentials and TLS of `keys` when a config gave
/// them, exactly as `lb run` would use them.
fn command_settings(servers: Vec<String>, keys: Option<&LbNatsConfig>, client_name: &str) -> NatsSettings {
    match keys {
        Some(keys) => NatsSettings::from_keys(servers, keys.auth_keys(), client_name.to_owned()),
        None => NatsSettings { servers, client_name: client_name.to_owned(), ..NatsSettings::default() },
    }
}

/// Connects to the first of `settings.servers` that answers.
async fn connect(settings: &NatsSettings) -> Result<async_nats::Client, LbError> {
    let mut last = LbError::Nats("`nats.servers` is empty".to_owned());
    for server in &settings.servers {
        let options = client_options(settings).map_err(|e| LbError::Nats(e.to_string()))?.connection_timeout(Duration::from_secs(5));
        match options.connect(server.as_str()).await {
            Ok(client) => return Ok(client),
            Err(e) => last = LbError::Nats(format!("could not reach {server}: {e}")),
        }
    }
    Err(last)
}

async fn connect_target(target: &BucketTarget) -> Result<async_nats::Client, LbError> {
    connect(&command_settings(vec![target.url.clone()], target.keys.as_ref(), "switchyard-lb-cli")).await
}

/// Runs one probe per backend, so a plan sees health the way a running `lb` would.
async fn probe_once(check: &HealthCheckConfig, sources: &mut Sources) {
    if check.kind == HealthCheckKind::None {
        return;
    }
    let backends = sources.resolve().backends();
    let results: Vec<_> = futures_util::stream::iter(backends)
        .map(|backend| async move { (backend, probe(check, backend).await.is_ok()) })
        .buffer_unordered(256)
        .collect()
        .await;
    for (backend, healthy) in results {
        sources.probe_result(backend, healthy);
    }
}

/// `lb plan`: what a sync would change now, changing nothing.
pub async fn plan(config_path: &Path) -> Result<String, LbError> {
    let config = load_config(config_path)?;
    let mut kernel = Kernel::open(&config)?;
    let observed = kernel.observe()?;
    let mut sources = initial_sources(&config, &observed, Instant::now());
    if let Some(nats) = &config.nats {
        let client = connect(&command_settings(nats.servers.clone(), Some(nats), "switchyard-lb-plan")).await?;
        if let Some(store) = kv::open_existing(&client, &nats.vip_bucket).await? {
            for event in kv::replay(&store).await? {
                // The same handling as a running lb's; refusals show up as rejections in the intent below.
                let _ = sources.kv_event(event);
            }
        }
    }
    probe_once(&config.health_check, &mut sources).await;
    let intent = sources.resolve();
    let plan = reconcile(&intent.desired(), &observed, kernel.options(true));
    let backends: Vec<_> = intent.vips.iter().flat_map(|v| v.resolved_backends.iter()).collect();
    let down = backends.iter().filter(|b| b.effective_weight == 0).count();
    let mut out = format!(
        "dataplane {}: {} VIPs, {} backends ({down} out of rotation)\n",
        kernel.dataplane_name(),
        intent.vips.len(),
        backends.len()
    );
    for rejection in &intent.rejected {
        let _ = writeln!(out, "refused {} VIP `{}`: {}", rejection.source.as_str(), rejection.vip, rejection.reason);
    }
    out.push_str(&describe(&plan));
    Ok(out)
}

fn describe(plan: &Plan) -> String {
    let mut out = if plan.is_empty() {
        "no changes: the kernel matches the intent\n".to_owned()
    } else {
        format!("{} changes:\n", plan.len())
    };
    for line in plan.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// `lb cleanup`: removes every service, address and table this `lb` owns.
pub fn cleanup(config_path: &Path) -> Result<String, LbError> {
    let config = load_config(config_path)?;
    let mut kernel = Kernel::open(&config)?;
    let plan = kernel.cleanup()?;
    let mut out = format!("removed everything lb owned in the {} dataplane\n", kernel.dataplane_name());
    for line in plan.to_string().lines() {
        let _ = writeln!(out, "  {line}");
    }
    Ok(out)
}

/// `lb vip put FILE`: validates one VIP and publishes it, refusing a clash with another VIP in the bucket.
pub async fn vip_put(target: &BucketTarget, file: &Path) -> Result<String, LbError> {
    let text = std::fs::read_to_string(file).map_err(|source| LbError::ReadConfig { path: file.to_owned(), source })?;
    let loaded = switchyard_config::parse_yaml::<VipSpec>(&text).map_err(|source| LbError::Config { path: file.to_owned(), source })?;
    let mut out = String::new();
    for key in &loaded.ignored_keys {
        let _ = writeln!(out, "warning: {}: key `{key}` is not part of a VIP and was not published", file.display());
    }
    let vip = loaded.value;
    let client = connect_target(target).await?;
    let store = kv::open(&client, &target.bucket).await?;
    for (name, _, value) in kv::snapshot(&store).await? {
        if name == vip.name {
            continue;
        }
        if let Ok(other) = VipSpec::from_json(&value)
            && other.value.key() == vip.key()
        {
            return Err(LbError::Vip(format!(
                "VIP `{name}` in bucket `{}` already uses {}; remove it first (`lb vip rm {name}`) or choose another address, port or protocol",
                target.bucket,
                vip.key()
            )));
        }
    }
    let json = serde_json::to_vec(&vip).map_err(|e| LbError::Vip(format!("could not encode the VIP: {e}")))?;
    let revision = kv::put(&store, &vip.name, json.into()).await?;
    let _ = writeln!(out, "published VIP `{}` ({}) to bucket `{}` at revision {revision}", vip.name, vip.key(), target.bucket);
    Ok(out)
}

/// `lb vip ls`: every VIP in the bucket, one per line.
pub async fn vip_ls(target: &BucketTarget) -> Result<String, LbError> {
    let client = connect_target(target).await?;
    let Some(store) = kv::open_existing(&client, &target.bucket).await? else {
        return Ok(format!("bucket `{}` does not exist yet; `lb vip put` creates it\n", target.bucket));
    };
    let entries = kv::snapshot(&store).await?;
    if entries.is_empty() {
        return Ok(format!("bucket `{}` holds no VIPs\n", target.bucket));
    }
    let mut out = format!("{:<24} {:<28} {:<10} {:<9} {}\n", "NAME", "VIP", "SCHEDULER", "BACKENDS", "REVISION");
    for (name, revision, value) in entries {
        match VipSpec::from_json(&value) {
            Ok(vip) => {
                let vip = vip.value;
                let _ = writeln!(out, "{name:<24} {:<28} {:<10} {:<9} {revision}", vip.key().to_string(), vip.scheduler.as_str(), vip.backends.len());
            }
            Err(err) => {
                let _ = writeln!(out, "{name:<24} invalid value at revision {revision}: {err}");
            }
        }
    }
    Ok(out)
}

/// `lb vip rm NAME`: deletes one VIP.
pub async fn vip_rm(target: &BucketTarget, name: &str) -> Result<String, LbError> {
    let client = connect_target(target).await?;
    let missing = || LbError::Vip(format!("bucket `{}` holds no VIP named `{name}`; `lb vip ls` lists them", target.bucket));
    let store = kv::open_existing(&client, &target.bucket).await?.ok_or_else(missing)?;
    if kv::remove(&store, name).await? {
        Ok(format!("removed VIP `{name}` from bucket `{}`\n", target.bucket))
    } else {
        Err(missing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_commands_use_the_configs_credentials_and_tls() {
        let keys = LbNatsConfig {
            user: "operator".into(),
            pass: "secret".into(),
            tls_enabled: true,
            ca_certs: "CA PEM".into(),
            cert_chain: "CHAIN PEM".into(),
            private_key: "KEY PEM".into(),
            ..LbNatsConfig::default()
        };
        let settings = command_settings(vec!["nats://198.18.0.1:4222".into()], Some(&keys), "switchyard-lb-cli");
        assert_eq!(settings.servers, ["nats://198.18.0.1:4222"]);
        assert_eq!(settings.credentials, Some(("operator".to_owned(), "secret".to_owned())));
        let tls = settings.tls.expect("TLS from nats.tls_enabled");
        assert_eq!(tls.ca_pem, "CA PEM");
        assert_eq!(tls.client_identity, Some(("CHAIN PEM".to_owned(), "KEY PEM".to_owned())));

        let plain = command_settings(vec!["nats://198.18.0.1:4222".into()], None, "switchyard-lb-cli");
        assert!(plain.credentials.is_none() && plain.tls.is_none());
        assert_eq!(plain.client_name, "switchyard-lb-cli");
    }

    #[tokio::test]
    async fn unusable_tls_keys_are_reported_before_any_connection() {
        let keys = LbNatsConfig { tls_enabled: true, ca_certs: "not pem".into(), ..LbNatsConfig::default() };
        let settings = command_settings(vec!["nats://198.18.0.1:4222".into()], Some(&keys), "switchyard-lb-cli");
        let err = connect(&settings).await.unwrap_err();
        assert!(err.to_string().contains("no CA certificate"), "{err}");
    }
}
