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

use crate::cluster::{Kind, ObjectKey};
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
    /// The Ingresses the config nginx serves was built with: only these get
    /// the addresses.
    pub served: BTreeSet<ObjectKey>,
    /// The addresses to publish; `None` while they are not known (the
    /// `--publish-service` Service is missing), when status is left alone.
    pub addresses: Option<Vec<IngressLoadBalancerIngress>>,
    /// The state each Ingress is in, for its Events.
    pub states: BTreeMap<ObjectKey, EventState>,
}

/// The state of one Ingress as its Events tell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventState {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
    /// What makes two states the same: the reason and the note, except
    /// for `ReloadFailed`, whose note changes with every config (nginx's
    /// line numbers) and which counts as one state per kind of failure.
    same: String,
}

impl EventState {
    fn new(type_: EventType, reason: &'static str, note: String) -> Self {
        EventState {
            same: format!("{reason}\n{note}"),
            type_,
            reason,
            note,
        }
    }
}

/// What the engine says about the config nginx serves.
pub struct Live<'a> {
    /// The Ingresses the served config was built with.
    pub served: &'a BTreeSet<ObjectKey>,
    /// Why the newest config is not served, while it is not.
    pub failure: Option<&'a crate::engine::Failure>,
    /// Ingresses changed since nginx last took a config.
    pub pending: &'a BTreeSet<ObjectKey>,
}

impl Round {
    /// The round of a build: `served` and `problems` from the newest build,
    /// `live` from the engine.
    pub fn new(
        served: &[ObjectKey],
        problems: &[Problem],
        live: Live<'_>,
        addresses: Option<Vec<IngressLoadBalancerIngress>>,
    ) -> Round {
        let mut per: BTreeMap<&ObjectKey, Vec<&Problem>> = BTreeMap::new();
        for p in problems.iter().filter(|p| p.object.kind == Kind::Ingress) {
            per.entry(&p.object.key).or_default().push(p);
        }
        for key in served {
            per.entry(key).or_default();
        }
        let mut states = BTreeMap::new();
        for (key, problems) in per {
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
            let worst = problems.iter().map(|p| p.severity).min();
            let not_served = !live.served.contains(key) || live.pending.contains(key);
            let state = match (worst, live.failure) {
                (Some(Severity::Rejected), _) => {
                    EventState::new(EventType::Warning, "Rejected", describe(Severity::Rejected))
                }
                (_, Some(f)) if not_served => EventState {
                    type_: EventType::Warning,
                    reason: "ReloadFailed",
                    note: f.message.clone(),
                    same: format!("ReloadFailed\n{}", f.label),
                },
                // Built into a config nginx does not serve yet.
                _ if !live.served.contains(key) => continue,
                (Some(Severity::Warning), _) => {
                    EventState::new(EventType::Warning, "Degraded", describe(Severity::Warning))
                }
                _ => EventState::new(EventType::Normal, "Accepted", "served by wicket".into()),
            };
            states.insert(key.clone(), state);
        }
        Round {
            served: live.served.clone(),
            addresses,
            states,
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

/// The addresses to publish, sorted; `None` when `--publish-service`
/// names a Service that is missing (`publish` is that Service, read on its
/// own, whatever namespaces are watched).
pub fn addresses(
    opts: &StatusOptions,
    publish: Option<&Service>,
) -> Option<Vec<IngressLoadBalancerIngress>> {
    let mut out: Vec<IngressLoadBalancerIngress> =
        opts.publish_addresses.iter().map(|a| address(a)).collect();
    if opts.publish_service.is_some() {
        out.extend(service_addresses(publish?));
    }
    out.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    out.dedup();
    Some(out)
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
    /// The state each Ingress's last Event told.
    sent: HashMap<ObjectKey, EventState>,
    /// Whether the missing publish Service was reported (once per absence).
    warned_no_addresses: bool,
}

/// Requests to change status that may run at once.
const STATUS_CONCURRENCY: usize = 8;
/// Status writes (and Events) between two returns of freed memory.
const TRIM_EVERY: usize = 100;
/// First and longest wait before a round whose writes failed is tried
/// again.
const RETRY: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(30),
);

impl StatusWriter {
    pub fn new(client: Client, ingresses: Store<Ingress>, identity: &str) -> Self {
        StatusWriter {
            client,
            ingresses,
            identity: identity.to_string(),
            sent: HashMap::new(),
            warned_no_addresses: false,
        }
    }

    /// Runs until `rounds` closes; acts only while `leader` is true. A
    /// round whose writes did not all succeed is tried again, waiting
    /// longer each time, until it succeeds or a newer round comes.
    pub async fn run(
        mut self,
        mut rounds: watch::Receiver<Option<Arc<Round>>>,
        mut leader: watch::Receiver<bool>,
    ) {
        let mut wait = RETRY.0;
        loop {
            let is_leader = *leader.borrow_and_update();
            if !is_leader {
                self.sent.clear();
            }
            let round = rounds.borrow_and_update().clone();
            let mut retry_at = None;
            if is_leader && let Some(round) = round {
                if self.apply(&round).await {
                    wait = RETRY.0;
                } else {
                    debug!(
                        wait_ms = wait.as_millis() as u64,
                        "status writes failed; trying again"
                    );
                    retry_at = Some(std::time::Instant::now() + wait);
                    wait = (wait * 2).min(RETRY.1);
                }
            }
            tokio::select! {
                r = rounds.changed() => if r.is_err() { return },
                r = leader.changed() => if r.is_err() { return },
                _ = crate::engine::sleep_until(retry_at) => {}
            }
        }
    }

    /// Writes the status of every Ingress that differs from the round, a
    /// bounded number at a time (so a status storm over thousands of
    /// Ingresses holds few of their old versions at once), then the Events
    /// of the Ingresses whose state changed. Returns whether every write
    /// went through.
    pub async fn apply(&mut self, round: &Round) -> bool {
        // Forget the Ingresses that are gone (preview environments come and
        // go by the thousand).
        let store = &self.ingresses;
        self.sent.retain(|key, _| {
            store
                .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace))
                .is_some()
        });
        let Some(addresses) = &round.addresses else {
            if !self.warned_no_addresses {
                warn!(
                    "the --publish-service Service does not exist; Ingress status is left as it is until it does"
                );
                self.warned_no_addresses = true;
            }
            let published = BTreeSet::new();
            return self.events(round, &published).await;
        };
        self.warned_no_addresses = false;
        // Served Ingresses that already show our addresses were accepted
        // before (by this leader or a previous one).
        let mut published = BTreeSet::new();
        let mut changes: Vec<(ObjectKey, Vec<IngressLoadBalancerIngress>)> = Vec::new();
        for ing in self.ingresses.state() {
            let key = ObjectKey::new(ing.namespace().unwrap_or_default(), ing.name_any());
            let now = current(&ing);
            if !now.is_empty() && now == *addresses {
                published.insert(key.clone());
            }
            let want = if round.served.contains(&key) {
                addresses.clone()
            } else if !now.is_empty() && now == *addresses {
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
        let failed = std::sync::atomic::AtomicUsize::new(0);
        let (written, failed_ref) = (&written, &failed);
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
                    // Deleted meanwhile.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    // Changed meanwhile (the watch brings the new version),
                    // or the API server did not answer: tried again.
                    Err(e) => {
                        failed_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(ingress = %key, error = %e, "status update failed; trying again");
                    }
                }
            })
            .await;
        let events = self.events(round, &published).await;
        // Thousands of status writes allocate and free a lot.
        crate::engine::release_free_memory();
        events && failed.load(std::sync::atomic::Ordering::Relaxed) == 0
    }

    /// Sends an Event for each Ingress whose state changed. Returns whether
    /// every Event was sent (those that were not are sent again).
    async fn events(&mut self, round: &Round, published: &BTreeSet<ObjectKey>) -> bool {
        let mut all = true;
        for (i, (key, state)) in round.states.iter().enumerate() {
            if i % TRIM_EVERY == TRIM_EVERY - 1 {
                crate::engine::release_free_memory();
            }
            if self.sent.get(key).is_some_and(|s| s.same == state.same) {
                continue;
            }
            let Some(ing) = self
                .ingresses
                .get(&kube::runtime::reflector::ObjectRef::new(&key.name).within(&key.namespace))
            else {
                continue;
            };
            // A new leader does not repeat that Ingresses already accepted
            // are accepted.
            let quiet = !self.sent.contains_key(key)
                && state.type_ == EventType::Normal
                && published.contains(key);
            if quiet
                || self
                    .publish(&ing, state.type_, state.reason, &state.note)
                    .await
            {
                self.sent.insert(key.clone(), state.clone());
            } else {
                all = false;
            }
        }
        all
    }

    /// Sends one Event; whether it was created.
    async fn publish(&self, ing: &Ingress, type_: EventType, reason: &str, note: &str) -> bool {
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
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => true,
            Err(e) => {
                warn!(ingress = %ing.name_any(), error = %e, "could not send an Event");
                false
            }
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
    use super::*;

    fn key(n: &str) -> ObjectKey {
        ObjectKey::new("ns", n)
    }

    #[test]
    fn states_follow_what_nginx_serves() {
        let ing = |n: &str| crate::cluster::ObjectRef::new(Kind::Ingress, key(n));
        let problems = vec![
            Problem::rejected(&ing("bad"), None, "no rules"),
            Problem::warning(&ing("slow"), Some("spec.rules[0]".into()), "no endpoints"),
        ];
        let served: Vec<ObjectKey> = ["ok", "slow", "new", "changed"].map(key).into();
        let live: BTreeSet<ObjectKey> = ["ok", "slow", "changed"].map(key).into();
        let pending: BTreeSet<ObjectKey> = ["new", "changed"].map(key).into();
        let failure = crate::engine::Failure {
            label: "write",
            message: "writing nginx.conf.candidate: disk full".into(),
        };
        let reason = |r: &Round, n: &str| r.states.get(&key(n)).map(|s| s.reason);
        let r = Round::new(
            &served,
            &problems,
            Live {
                served: &live,
                failure: Some(&failure),
                pending: &pending,
            },
            Some(Vec::new()),
        );
        assert_eq!(r.served, live, "status only for what nginx serves");
        assert_eq!(reason(&r, "bad"), Some("Rejected"));
        assert_eq!(reason(&r, "slow"), Some("Degraded"));
        assert_eq!(reason(&r, "ok"), Some("Accepted"));
        assert_eq!(reason(&r, "new"), Some("ReloadFailed"));
        assert_eq!(reason(&r, "changed"), Some("ReloadFailed"));
        // Another failure of the same kind, with another message, is the
        // same state: no second Event.
        let again = crate::engine::Failure {
            label: "write",
            message: "writing nginx.conf.candidate: still full".into(),
        };
        let r2 = Round::new(
            &served,
            &problems,
            Live {
                served: &live,
                failure: Some(&again),
                pending: &pending,
            },
            Some(Vec::new()),
        );
        assert_eq!(r.states[&key("new")].same, r2.states[&key("new")].same);
        // Applied: every served Ingress is live and nothing is pending.
        let all: BTreeSet<ObjectKey> = served.iter().cloned().collect();
        let none = BTreeSet::new();
        let r3 = Round::new(
            &served,
            &problems,
            Live {
                served: &all,
                failure: None,
                pending: &none,
            },
            Some(Vec::new()),
        );
        assert_eq!(reason(&r3, "new"), Some("Accepted"));
        // Built, not yet served, no failure: nothing to say yet.
        let r4 = Round::new(
            &served,
            &[],
            Live {
                served: &live,
                failure: None,
                pending: &pending,
            },
            Some(Vec::new()),
        );
        assert_eq!(reason(&r4, "new"), None);
    }

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
