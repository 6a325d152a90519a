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
    /// The global settings ConfigMap (watched on its own when
    /// `--watch-namespace` leaves it out).
    pub configmap: Option<NamespacedName>,
    /// `--tcp-services-configmap` and `--udp-services-configmap`: watched
    /// on their own too when `--watch-namespace` leaves them out.
    pub tcp_services: Option<NamespacedName>,
    pub udp_services: Option<NamespacedName>,
    /// `--publish-service`: watched on its own, whatever namespaces are.
    pub publish_service: Option<NamespacedName>,
}

/// The caches of every kind wicket reads.
pub struct KubeSource {
    ingresses: Store<Ingress>,
    classes: Store<IngressClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    secrets: Store<Secret>,
    /// Every ConfigMap of the watched namespaces (annotations name them:
    /// custom-headers, fastcgi-params-configmap), and the `--configmap`,
    /// `--tcp-services-configmap` and `--udp-services-configmap` ones on
    /// their own when they are elsewhere.
    config_maps: Store<ConfigMap>,
    settings: Vec<Store<ConfigMap>>,
    publish: Option<Store<Service>>,
}

/// A ConfigMap as wicket reads it: its `data`; no binary data, labels or
/// annotations (kubectl's last-applied-configuration is a whole copy).
fn slim_config_map(c: &mut ConfigMap) {
    slim(c);
    c.binary_data = None;
    c.metadata.annotations = None;
    c.metadata.labels = None;
    c.metadata.owner_references = None;
}

/// Secret keys wicket reads; the others are dropped from the cache, as are
/// a Secret's annotations (`last-applied-configuration` would hold the whole
/// Secret in clear text).
const SECRET_KEYS: &[&str] = &["tls.crt", "tls.key", "ca.crt"];

/// Drops the managed fields. Nothing else: the status writer sends cached
/// Ingresses back to the API server, which keeps their metadata, so an
/// annotation dropped here would be deleted from the user's Ingress.
fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// A Service as wicket reads it: its type, ports, addresses (cluster IP,
/// external IPs and name, load balancer status, for the published
/// addresses); metadata without labels and annotations (such as kubectl's
/// last-applied-configuration, a copy of the whole object). wicket never
/// writes Services or EndpointSlices back.
fn slim_service(s: &mut Service) {
    slim(s);
    let meta = &mut s.metadata;
    meta.labels = None;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(spec) = &mut s.spec {
        spec.selector = None;
        spec.cluster_ips = None;
        spec.ip_families = None;
        spec.ip_family_policy = None;
        spec.session_affinity = None;
        spec.session_affinity_config = None;
        spec.internal_traffic_policy = None;
        spec.external_traffic_policy = None;
        spec.load_balancer_source_ranges = None;
        spec.load_balancer_class = None;
        spec.traffic_distribution = None;
    }
    if let Some(status) = &mut s.status {
        status.conditions = None;
    }
}

/// An EndpointSlice as wicket reads it: its Service label, address type,
/// ports, and each endpoint's addresses and conditions.
fn slim_slice(e: &mut EndpointSlice) {
    slim(e);
    let meta = &mut e.metadata;
    meta.annotations = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(labels) = &mut meta.labels {
        labels.retain(|k, _| k == crate::build::backends::SERVICE_NAME_LABEL);
    }
    for ep in &mut e.endpoints {
        ep.target_ref = None;
        ep.hints = None;
        ep.deprecated_topology = None;
        ep.node_name = None;
        ep.zone = None;
        ep.hostname = None;
    }
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

/// What each object looked like at the last change signalled, so a change
/// that leaves what wicket reads alone (a status write) signals nothing.
/// A relist replaces it whole when it ends: objects deleted while the
/// watch was away are forgotten, so one created again identically is
/// still a change.
#[derive(Default)]
struct Fingerprints {
    seen: std::collections::HashMap<ObjectKey, u64>,
    /// What the relist under way has shown so far.
    relisted: std::collections::HashMap<ObjectKey, u64>,
}

impl Fingerprints {
    /// Records an object; whether it changed.
    fn apply(&mut self, key: ObjectKey, fp: u64) -> bool {
        self.seen.insert(key, fp) != Some(fp)
    }
    fn delete(&mut self, key: &ObjectKey) {
        self.seen.remove(key);
    }
    fn relist(&mut self) {
        self.relisted.clear();
    }
    fn relisted(&mut self, key: ObjectKey, fp: u64) {
        self.relisted.insert(key, fp);
    }
    fn relist_done(&mut self) {
        self.seen = std::mem::take(&mut self.relisted);
    }
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
        let mut seen = Fingerprints::default();
        while let Some(ev) = stream.next().await {
            let change = |o: &K| Change {
                kind,
                key: ObjectKey::new(o.namespace().unwrap_or_default(), o.name_any()),
            };
            match ev {
                Ok(Event::Apply(o)) => {
                    let c = change(&o);
                    if let Some(f) = fingerprint
                        && !seen.apply(c.key.clone(), f(&o))
                    {
                        continue;
                    }
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Ok(Event::Delete(o)) => {
                    let c = change(&o);
                    seen.delete(&c.key);
                    if tx.send(c).is_err() {
                        return;
                    }
                }
                Ok(Event::Init) => seen.relist(),
                Ok(Event::InitApply(o)) => {
                    if let Some(f) = fingerprint {
                        seen.relisted(change(&o).key, f(&o));
                    }
                }
                Ok(Event::InitDone) => {
                    seen.relist_done();
                    // The store was replaced whole: one change for it.
                    let c = Change {
                        kind,
                        key: ObjectKey::new("", ""),
                    };
                    if tx.send(c).is_err() {
                        return;
                    }
                }
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
        let config_maps = reflect(
            api(&client, ns),
            cfg(),
            Kind::ConfigMap,
            changes.clone(),
            slim_config_map,
            None,
        );
        // The settings and services ConfigMaps, when the namespaces
        // watched leave them out.
        let mut named: Vec<&NamespacedName> =
            [&opts.configmap, &opts.tcp_services, &opts.udp_services]
                .into_iter()
                .flatten()
                .filter(|cm| ns.is_some_and(|ns| ns != cm.namespace.as_str()))
                .collect();
        named.sort_by_key(|n| n.to_string());
        named.dedup_by_key(|n| n.to_string());
        let settings = named
            .into_iter()
            .map(|cm| {
                reflect(
                    Api::<ConfigMap>::namespaced(client.clone(), cm.namespace.as_str()),
                    cfg().fields(&format!("metadata.name={}", cm.name.as_str())),
                    Kind::ConfigMap,
                    changes.clone(),
                    slim_config_map,
                    None,
                )
            })
            .collect();
        let publish = opts.publish_service.as_ref().map(|svc| {
            reflect(
                Api::<Service>::namespaced(client.clone(), svc.namespace.as_str()),
                cfg().fields(&format!("metadata.name={}", svc.name.as_str())),
                Kind::Service,
                changes.clone(),
                slim_service,
                None,
            )
        });
        KubeSource {
            publish,
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
                slim_service,
                None,
            ),
            slices: reflect(
                api(&client, ns),
                cfg(),
                Kind::EndpointSlice,
                changes.clone(),
                slim_slice,
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
            settings,
        }
    }

    /// Resolves once every watch has listed its objects.
    pub async fn wait_synced(&self) -> Result<(), WriterDropped> {
        self.ingresses.wait_until_ready().await?;
        self.classes.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        for cm in &self.settings {
            cm.wait_until_ready().await?;
        }
        if let Some(p) = &self.publish {
            p.wait_until_ready().await?;
        }
        Ok(())
    }

    /// The `--publish-service` Service, if it exists.
    pub fn publish_service(&self) -> Option<Arc<Service>> {
        self.publish.as_ref()?.state().into_iter().next()
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
            config_maps: {
                let mut all = keyed(&self.config_maps);
                for s in &self.settings {
                    all.extend(keyed(s));
                }
                all
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Object;

    /// Objects as the API server returns them, with the fields the slim
    /// functions drop.
    const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: '{"big": "copy"}', note: x}
  ownerReferences: [{apiVersion: v1, kind: Thing, name: t, uid: u}]
spec:
  type: LoadBalancer
  selector: {app: web}
  clusterIP: 10.0.0.9
  clusterIPs: [10.0.0.9]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  sessionAffinity: None
  externalIPs: [192.0.2.7]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
status:
  loadBalancer: {ingress: [{ip: 203.0.113.5}, {hostname: lb.example}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
  ownerReferences: [{apiVersion: v1, kind: Service, name: web, uid: u}]
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.1.0.1]
  conditions: {ready: true, serving: true}
  nodeName: node-a
  zone: z1
  targetRef: {kind: Pod, name: web-1, namespace: shop, uid: p1}
- addresses: [10.1.0.2]
  conditions: {ready: false}
  nodeName: node-b
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"big": "copy"}'
    nginx.ingress.kubernetes.io/rewrite-target: /
spec:
  rules:
  - host: shop.test
    http: {paths: [{path: /a, pathType: Prefix, backend: {service: {name: web, port: {name: http}}}}]}
"#;

    fn cluster(slimmed: bool) -> Cluster {
        let mut c = Cluster::default();
        for o in crate::source::manifest::parse(OBJECTS, false)
            .unwrap()
            .objects
        {
            c.insert(match o {
                Object::Service(s) if slimmed => {
                    let mut s = Arc::unwrap_or_clone(s);
                    slim_service(&mut s);
                    Object::Service(Arc::new(s))
                }
                Object::EndpointSlice(e) if slimmed => {
                    let mut e = Arc::unwrap_or_clone(e);
                    slim_slice(&mut e);
                    Object::EndpointSlice(Arc::new(e))
                }
                Object::Ingress(i) if slimmed => {
                    let mut i = Arc::unwrap_or_clone(i);
                    slim(&mut i);
                    Object::Ingress(Arc::new(i))
                }
                o => o,
            });
        }
        c
    }

    #[test]
    fn an_object_gone_during_a_relist_is_forgotten() {
        let k = |n: &str| ObjectKey::new("ns", n);
        let mut f = Fingerprints::default();
        assert!(f.apply(k("a"), 1));
        assert!(f.apply(k("b"), 2));
        assert!(!f.apply(k("a"), 1), "the same again is no change");
        // The watch was away; `b` was deleted meanwhile, `a` is relisted.
        f.relist();
        f.relisted(k("a"), 1);
        f.relist_done();
        assert!(!f.apply(k("a"), 1));
        assert!(f.apply(k("b"), 2), "b created again, the same: a change");
        f.delete(&k("b"));
        assert!(f.apply(k("b"), 2));
        assert_eq!(f.seen.len(), 2);
        assert!(f.relisted.is_empty());
    }

    #[test]
    fn slimmed_objects_build_the_same_config_and_status() {
        let (full, slimmed) = (cluster(false), cluster(true));
        let svc = &slimmed.services[&ObjectKey::new("shop", "web")];
        assert!(svc.spec.as_ref().unwrap().selector.is_none(), "slimmed");
        // The status writer sends cached Ingresses back: their annotations
        // must all stay.
        let ing = &slimmed.ingresses[&ObjectKey::new("shop", "web")];
        assert_eq!(
            ing.metadata,
            full.ingresses[&ObjectKey::new("shop", "web")].metadata
        );

        let mut opts =
            crate::build::Options::new(80, 443, crate::certs::generate_default().unwrap());
        opts.class.watch_without_class = true;
        let (a, b) = (
            crate::build::build(&full, &opts),
            crate::build::build(&slimmed, &opts),
        );
        assert_eq!(a.config, b.config);
        assert_eq!(a.problems, b.problems);
        assert_eq!(a.config.upstreams[0].servers.len(), 1, "the ready endpoint");

        let status = crate::status::StatusOptions {
            publish_service: Some("shop/web".parse().unwrap()),
            publish_addresses: Vec::new(),
            update_on_shutdown: false,
        };
        let svc = |c: &Cluster| c.services.get(&ObjectKey::new("shop", "web")).cloned();
        let published = crate::status::addresses(&status, svc(&slimmed).as_deref()).unwrap();
        assert_eq!(
            Some(&published),
            crate::status::addresses(&status, svc(&full).as_deref()).as_ref()
        );
        assert_eq!(published.len(), 3, "{published:?}");
        // A publish Service that is missing: no addresses, not empty ones.
        assert_eq!(crate::status::addresses(&status, None), None);
    }
}
