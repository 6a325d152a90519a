//! The Kubernetes API source: a kube-rs reflector per kind, each with the
//! default backoff. Stores swap in whole after a (re)list, so a watch restart
//! or a 410 Gone never shows an emptied snapshot. Every change is signalled
//! on a channel; the snapshot is taken from the stores when the controller
//! rebuilds.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector::store::WriterDropped};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

use crate::cluster::{Cluster, Kind, ObjectKey};
use crate::values::NamespacedName;

/// A change seen by a watch: the kind, and the object's key (for Ingresses,
/// so Events can name what changed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub key: ObjectKey,
}

/// What to watch.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// Watch namespaced kinds in this namespace only (`--watch-namespace`).
    pub namespace: Option<String>,
    /// The global settings ConfigMap: the only ConfigMap watched.
    pub configmap: Option<NamespacedName>,
}

/// The caches of every kind wicket reads.
pub struct KubeSource {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    config_maps: Option<Store<ConfigMap>>,
}

/// Secret keys wicket reads; the others are dropped from the cache, as are
/// a Secret's annotations (`last-applied-configuration` would hold the whole
/// Secret in clear text).
const SECRET_KEYS: &[&str] = &["tls.crt", "tls.key", "ca.crt"];

fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

fn slim_secret(s: &mut Secret) {
    slim(s);
    s.metadata.annotations = None;
    if let Some(d) = &mut s.data {
        d.retain(|k, _| SECRET_KEYS.contains(&k.as_str()));
    }
    s.string_data = None;
}

/// The parts of an Ingress wicket reads: a change to anything else (its
/// status, which wicket itself writes) needs no rebuild.
fn ingress_fingerprint(i: &Ingress) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    i.metadata.generation.hash(&mut h);
    i.metadata.annotations.hash(&mut h);
    i.metadata.labels.hash(&mut h);
    serde_json::to_vec(&i.spec).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// A reflector for one kind; every change is signalled on `tx`, except,
/// with `fingerprint`, changes that leave the fingerprint the same.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    kind: Kind,
    tx: mpsc::UnboundedSender<Change>,
    modify: fn(&mut K),
    fingerprint: Option<fn(&K) -> u64>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream =
        reflector::reflector(writer, watcher::watcher(api, cfg).modify(modify)).default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // What each object looked like at the last change signalled.
        let mut seen: std::collections::HashMap<ObjectKey, u64> = Default::default();
        while let Some(ev) = stream.next().await {
            let change = |o: &K| Change {
                kind,
                key: ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()),
            };
            match ev {
                Ok(Event::Apply(o)) => {
                    let c = change(&o);
                    if let Some(f) = fingerprint {
                        let fp = f(&o);
                        if seen.insert(c.key.clone(), fp) == Some(fp) {
                            continue;
                        }
                    }
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Ok(Event::Delete(o)) => {
                    let c = change(&o);
                    seen.remove(&c.key);
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Ok(Event::InitDone) => {
                    let c = Change {
                        kind,
                        key: ObjectKey::new("", ""),
                    };
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => warn!(kind = %kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    });
    reader
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

impl KubeSource {
    /// Starts the watches; every change is sent on `changes`.
    pub fn start(
        client: Client,
        opts: &KubeOptions,
        changes: mpsc::UnboundedSender<Change>,
    ) -> KubeSource {
        let ns = opts.namespace.as_deref();
        let cfg = watcher::Config::default;
        let config_maps = opts.configmap.as_ref().map(|cm| {
            reflect(
                Api::<ConfigMap>::namespaced(client.clone(), cm.namespace.as_str()),
                cfg().fields(&format!("metadata.name={}", cm.name.as_str())),
                Kind::ConfigMap,
                changes.clone(),
                slim,
                None,
            )
        });
        KubeSource {
            ingresses: reflect(
                api(&client, ns),
                cfg(),
                Kind::Ingress,
                changes.clone(),
                slim,
                Some(ingress_fingerprint),
            ),
            classes: reflect(
                Api::all(client.clone()),
                cfg(),
                Kind::IngressClass,
                changes.clone(),
                slim,
                None,
            ),
            services: reflect(
                api(&client, ns),
                cfg(),
                Kind::Service,
                changes.clone(),
                slim,
                None,
            ),
            slices: reflect(
                api(&client, ns),
                cfg(),
                Kind::EndpointSlice,
                changes.clone(),
                slim,
                None,
            ),
            secrets: reflect(
                api(&client, ns),
                cfg(),
                Kind::Secret,
                changes,
                slim_secret,
                None,
            ),
            config_maps,
        }
    }

    /// Resolves once every watch has listed its objects.
    pub async fn wait_synced(&self) -> Result<(), WriterDropped> {
        self.ingresses.wait_until_ready().await?;
        self.classes.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        if let Some(cm) = &self.config_maps {
            cm.wait_until_ready().await?;
        }
        Ok(())
    }

    /// The Ingress cache (for status).
    pub fn ingresses(&self) -> &Store<Ingress> {
        &self.ingresses
    }

    /// The objects as they are now.
    pub fn snapshot(&self) -> Cluster {
        fn keyed<K>(store: &Store<K>) -> BTreeMap<ObjectKey, Arc<K>>
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + Hash + Clone,
        {
            store
                .state()
                .into_iter()
                .map(|o| {
                    (
                        ObjectKey::new(
                            o.meta().namespace.clone().unwrap_or_default(),
                            o.meta().name.clone().unwrap_or_default(),
                        ),
                        o,
                    )
                })
                .collect()
        }
        Cluster {
            ingresses: keyed(&self.ingresses),
            ingress_classes: self
                .classes
                .state()
                .into_iter()
                .map(|c| (c.name_any(), c))
                .collect(),
            services: keyed(&self.services),
            endpoint_slices: keyed(&self.slices),
            secrets: keyed(&self.secrets),
            config_maps: self.config_maps.as_ref().map(keyed).unwrap_or_default(),
        }
    }
}
