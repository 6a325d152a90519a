//! Ingress status and Events, written by the leader only.
//!
//! - `status.loadBalancer.ingress` of every served Ingress holds the publish
//!   addresses (`--publish-status-address`, or the addresses of the
//!   `--publish-service` Service); an Ingress that stops being served and
//!   still shows exactly those addresses is cleared.
//! - Events (what `kubectl describe ingress` shows): `Accepted`, `Rejected`
//!   with the reason, `Degraded` with what is not served, `ReloadFailed` on
//!   the Ingresses whose change nginx refused. An Event is sent only when an
//!   Ingress's state changes, so repeated identical Events are not sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{
    Ingress, IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::cluster::{Cluster, Kind, ObjectKey};
use crate::problem::{Problem, Severity};
use crate::values::NamespacedName;

/// Where the status addresses come from.
#[derive(Clone, Debug, Default)]
pub struct StatusOptions {
    pub publish_service: Option<NamespacedName>,
    /// `--publish-status-address`: IPs or host names.
    pub publish_addresses: Vec<String>,
    /// Clear the status of served Ingresses when the leader shuts down.
    pub update_on_shutdown: bool,
}

/// What one rebuild decided, for the status writer.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub served: BTreeSet<ObjectKey>,
    pub addresses: Vec<IngressLoadBalancerIngress>,
    /// Problems per Ingress.
    pub problems: BTreeMap<ObjectKey, Vec<Problem>>,
    /// nginx refused the config: the reason and the Ingresses that changed
    /// since the last config it accepted.
    pub reload_failed: Option<(String, Vec<ObjectKey>)>,
}

impl Round {
    pub fn new(
        served: &[ObjectKey],
        problems: &[Problem],
        addresses: Vec<IngressLoadBalancerIngress>,
    ) -> Round {
        let mut per: BTreeMap<ObjectKey, Vec<Problem>> = BTreeMap::new();
        for p in problems.iter().filter(|p| p.object.kind == Kind::Ingress) {
            per.entry(p.object.key.clone()).or_default().push(p.clone());
        }
        Round {
            served: served.iter().cloned().collect(),
            addresses,
            problems: per,
            reload_failed: None,
        }
    }
}

fn address(s: &str) -> IngressLoadBalancerIngress {
    if s.parse::<IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(s.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(s.to_string()),
            ..Default::default()
        }
    }
}

fn service_addresses(svc: &Service) -> Vec<IngressLoadBalancerIngress> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out = Vec::new();
    match spec.type_.as_deref() {
        Some("LoadBalancer") => {
            for lb in svc
                .status
                .iter()
                .filter_map(|s| s.load_balancer.as_ref())
                .flat_map(|l| l.ingress.iter().flatten())
            {
                if let Some(ip) = &lb.ip {
                    out.push(address(ip));
                } else if let Some(h) = &lb.hostname {
                    out.push(address(h));
                }
            }
        }
        Some("ExternalName") => out.extend(spec.external_name.as_deref().map(address)),
        _ => {}
    }
    out.extend(spec.external_ips.iter().flatten().map(|a| address(a)));
    if out.is_empty()
        && let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
    {
        out.push(address(ip));
    }
    out
}

/// The addresses to publish, sorted.
pub fn addresses(opts: &StatusOptions, cluster: &Cluster) -> Vec<IngressLoadBalancerIngress> {
    let mut out: Vec<IngressLoadBalancerIngress> =
        opts.publish_addresses.iter().map(|a| address(a)).collect();
    if let Some(nn) = &opts.publish_service
        && let Some(svc) = cluster.services.get(&nn.key())
    {
        out.extend(service_addresses(svc));
    }
    out.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    out.dedup();
    out
}

fn current(ing: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default()
}

async fn set_status(
    client: &Client,
    ing: &Ingress,
    to: Vec<IngressLoadBalancerIngress>,
) -> Result<(), kube::Error> {
    let api: Api<Ingress> = Api::namespaced(client.clone(), &ing.namespace().unwrap_or_default());
    let mut updated = ing.clone();
    updated.status = Some(IngressStatus {
        load_balancer: Some(IngressLoadBalancerStatus {
            ingress: if to.is_empty() { None } else { Some(to) },
        }),
    });
    api.replace_status(&ing.name_any(), &PostParams::default(), &updated)
        .await
        .map(|_| ())
}

/// Writes status and Events for each [`Round`] while this replica leads.
pub struct StatusWriter {
    client: Client,
    ingresses: Store<Ingress>,
    /// `reportingInstance` of the Events: this replica.
    identity: String,
    /// Last Event sent per Ingress: (type, reason, note).
    sent: HashMap<ObjectKey, (EventType, String, String)>,
}

/// Requests to change status that may run at once.
const STATUS_CONCURRENCY: usize = 8;
/// Status writes (and Events) between two returns of freed memory.
const TRIM_EVERY: usize = 100;
/// Most `ReloadFailed` Events for one failure.
const MAX_RELOAD_EVENTS: usize = 20;

impl StatusWriter {
    pub fn new(client: Client, ingresses: Store<Ingress>, identity: &str) -> Self {
        StatusWriter {
            client,
            ingresses,
            identity: identity.to_string(),
            sent: HashMap::new(),
        }
    }

    /// Runs until `rounds` closes; acts only while `leader` is true.
    pub async fn run(
        mut self,
        mut rounds: watch::Receiver<Option<Arc<Round>>>,
        mut leader: watch::Receiver<bool>,
    ) {
        loop {
            let is_leader = *leader.borrow_and_update();
            if !is_leader {
                self.sent.clear();
            }
            let round = rounds.borrow_and_update().clone();
            if is_leader && let Some(round) = round {
                self.apply(&round).await;
            }
            tokio::select! {
                r = rounds.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
            }
        }
    }

    /// Writes the status of every Ingress that differs from the round, a
    /// bounded number at a time (so a status storm over thousands of
    /// Ingresses holds few of their old versions at once).
    pub async fn apply(&mut self, round: &Round) {
        // Served Ingresses that already show our addresses were accepted
        // before (by this leader or a previous one).
        let mut published = BTreeSet::new();
        let mut changes: Vec<(ObjectKey, Vec<IngressLoadBalancerIngress>)> = Vec::new();
        for ing in self.ingresses.state() {
            let key = ObjectKey::new(ing.namespace().unwrap_or_default(), ing.name_any());
            let now = current(&ing);
            if !now.is_empty() && now == round.addresses {
                published.insert(key.clone());
            }
            let want = if round.served.contains(&key) {
                round.addresses.clone()
            } else if !now.is_empty() && now == round.addresses {
                Vec::new()
            } else {
                continue;
            };
            if now != want {
                changes.push((key, want));
            }
        }
        if !changes.is_empty() {
            info!(ingresses = changes.len(), "updating Ingress status");
        }
        let (client, store) = (&self.client, &self.ingresses);
        let written = std::sync::atomic::AtomicUsize::new(0);
        let written = &written;
        futures::stream::iter(changes)
            .for_each_concurrent(STATUS_CONCURRENCY, |(key, want)| async move {
                // Each write replaces an Ingress in the watch cache: free
                // the old versions as the round goes, not only at its end.
                if written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % TRIM_EVERY
                    == TRIM_EVERY - 1
                {
                    crate::engine::release_free_memory();
                }
                // The version in the cache now, not the one listed above.
                let Some(ing) = store.get(
                    &kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace),
                ) else {
                    return;
                };
                match set_status(client, &ing, want).await {
                    Ok(()) => debug!(ingress = %key, "status updated"),
                    // Changed meanwhile: the watch brings the new version and
                    // the next round tries again.
                    Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {}
                    Err(e) => warn!(ingress = %key, error = %e, "status update failed"),
                }
            })
            .await;
        self.events(round, &published).await;
        // Thousands of status writes allocate and free a lot.
        crate::engine::release_free_memory();
    }

    async fn events(&mut self, round: &Round, published: &BTreeSet<ObjectKey>) {
        let mut keys: BTreeSet<&ObjectKey> = round.served.iter().collect();
        keys.extend(round.problems.keys());
        for (i, key) in keys.into_iter().enumerate() {
            if i % TRIM_EVERY == TRIM_EVERY - 1 {
                crate::engine::release_free_memory();
            }
            let Some(ing) = self
                .ingresses
                .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace))
            else {
                continue;
            };
            let problems = round
                .problems
                .get(key)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let worst = problems.iter().map(|p| p.severity).min();
            let describe = |sev: Severity| {
                problems
                    .iter()
                    .filter(|p| p.severity == sev)
                    .map(|p| match &p.field {
                        Some(f) => format!("{f}: {}", p.message),
                        None => p.message.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            let state = match worst {
                Some(Severity::Rejected) => (
                    EventType::Warning,
                    "Rejected".to_string(),
                    describe(Severity::Rejected),
                ),
                Some(Severity::Warning) => (
                    EventType::Warning,
                    "Degraded".to_string(),
                    describe(Severity::Warning),
                ),
                _ => (
                    EventType::Normal,
                    "Accepted".to_string(),
                    "served by wicket".to_string(),
                ),
            };
            if self.sent.get(key) == Some(&state) {
                continue;
            }
            // A new leader does not repeat that Ingresses already accepted
            // are accepted.
            let quiet = !self.sent.contains_key(key)
                && state.0 == EventType::Normal
                && published.contains(key);
            self.sent.insert(key.clone(), state.clone());
            if !quiet {
                self.publish(&ing, state.0, &state.1, &state.2).await;
            }
        }
        if let Some((reason, keys)) = &round.reload_failed {
            for key in keys.iter().take(MAX_RELOAD_EVENTS) {
                if let Some(ing) = self.ingresses.get(
                    &kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace),
                ) {
                    self.publish(&ing, EventType::Warning, "ReloadFailed", reason)
                        .await;
                }
            }
        }
    }

    async fn publish(&self, ing: &Ingress, type_: EventType, reason: &str, note: &str) {
        // The API server caps a note at 1 KiB.
        let mut note = note.to_string();
        if note.len() > 1000 {
            let cut = (0..=1000)
                .rev()
                .find(|i| note.is_char_boundary(*i))
                .unwrap_or(0);
            note.truncate(cut);
            note.push_str(" ...");
        }
        // Sent directly rather than through kube's Recorder: `sent` already
        // keeps one Event per change, and the Recorder would keep a copy of
        // every Event for minutes (10,000 at the first round of a large
        // cluster) and scan them all at each send.
        let meta = ing.meta();
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(event_name(&ing.name_any(), now.as_nanosecond())),
                namespace: meta.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                match type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_string(),
            ),
            reason: Some(reason.to_string()),
            note: Some(note),
            action: Some("Sync".to_string()),
            regarding: Some(ing.object_ref(&())),
            reporting_controller: Some(EVENT_CONTROLLER.to_string()),
            reporting_instance: Some(self.identity.clone()),
            ..Event::default()
        };
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        if let Err(e) = api.create(&PostParams::default(), &event).await {
            warn!(ingress = %ing.name_any(), error = %e, "could not send an Event");
        }
    }
}

/// `reportingController` of the Events wicket sends.
const EVENT_CONTROLLER: &str = "wicket";

/// `INGRESS.NANOSECONDS` (hex), as kubectl and kube name Events, with the
/// Ingress name shortened so the whole stays a DNS subdomain of at most 253
/// characters.
fn event_name(ingress: &str, nanos: i128) -> String {
    let suffix = format!("{:x}", nanos.max(0));
    let room = 253 - 1 - suffix.len();
    let cut = (0..=ingress.len().min(room))
        .rev()
        .find(|i| ingress.is_char_boundary(*i))
        .unwrap_or(0);
    let prefix = ingress[..cut].trim_end_matches(['.', '-']);
    if prefix.is_empty() {
        format!("ingress.{suffix}")
    } else {
        format!("{prefix}.{suffix}")
    }
}

/// Clears the status of the Ingresses this replica served (on shutdown).
pub async fn clear(client: &Client, ingresses: &Store<Ingress>, served: &BTreeSet<ObjectKey>) {
    for ing in ingresses.state() {
        let key = ObjectKey::new(ing.namespace().unwrap_or_default(), ing.name_any());
        if served.contains(&key)
            && !current(&ing).is_empty()
            && let Err(e) = set_status(client, &ing, Vec::new()).await
        {
            warn!(ingress = %ing.name_any(), error = %e, "status not cleared");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::event_name;

    #[test]
    fn event_names_are_subdomains_of_at_most_253_characters() {
        assert_eq!(event_name("shop", 0x1234), "shop.1234");
        let long = format!("{}.b", "a".repeat(240));
        let name = event_name(&long, i128::from(i64::MAX));
        assert_eq!(name.len(), 253);
        assert_eq!(name, format!("{}.7fffffffffffffff", "a".repeat(236)));
        // A cut that would leave `.` or `-` before the suffix drops it.
        let dotted = format!("{}.{}", "a".repeat(235), "b".repeat(10));
        assert_eq!(
            event_name(&dotted, i128::from(i64::MAX)),
            format!("{}.7fffffffffffffff", "a".repeat(235))
        );
    }
}
