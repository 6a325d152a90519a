//! DNS names of `ExternalName` Services, resolved by wicket rather than by
//! nginx.
//!
//! nginx resolves a name in an `upstream` block when it loads a config, with
//! blocking lookups in its master process, and refuses the whole config if
//! one name does not resolve. wicket resolves the names itself instead,
//! ahead of each build, each lookup with a deadline, and writes the
//! addresses into the config:
//!
//! - `nginx -t` and reloads do no DNS at all, so a slow resolver slows
//!   nothing and a name that does not resolve makes its backend answer
//!   503 instead of refusing the config;
//! - the addresses nginx will connect to are known before it does, so
//!   build can refuse the ones no backend may have (wicket's own ports,
//!   loopback and link-local addresses in controller mode);
//! - a lookup that fails for a name that resolved before keeps the
//!   addresses it had (a passing DNS failure changes nothing);
//! - names are looked up again every [`REFRESH`], and a change of address
//!   is applied like any other change.
//!
//! [`Resolved`] is plain data that `build` reads; [`Resolver`] does the IO.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use futures::StreamExt;
use futures::future::BoxFuture;

/// How often names are looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// Longest one lookup may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Lookups that may run at once.
const CONCURRENCY: usize = 16;

/// What a name resolved to, as `build` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Sorted, without duplicates; never empty.
    Addresses(Vec<IpAddr>),
    /// The name never resolved; why.
    Failed(String),
}

/// The answers for the names a build needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved(pub BTreeMap<String, Answer>);

impl Resolved {
    pub fn get(&self, name: &str) -> Option<&Answer> {
        self.0.get(name)
    }
}

/// Looks one name up: its addresses, or why not.
pub type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, Result<Vec<IpAddr>, String>> + Send + Sync>;

/// The system resolver (getaddrinfo, in a blocking thread).
pub fn system_lookup() -> Lookup {
    Arc::new(|name: String| {
        Box::pin(async move {
            let found = tokio::net::lookup_host((name.as_str(), 0))
                .await
                .map_err(|e| e.to_string())?;
            Ok(found.map(|a| a.ip()).collect())
        })
    })
}

struct Entry {
    answer: Answer,
    looked_up: Instant,
}

/// Resolves names with a deadline each and keeps their last good answers.
pub struct Resolver {
    lookup: Lookup,
    cache: BTreeMap<String, Entry>,
    /// Names whose last lookup failed while a previous answer was kept, with
    /// the error: reported by the caller.
    pub stale: BTreeMap<String, String>,
}

impl Resolver {
    pub fn new(lookup: Lookup) -> Self {
        Resolver {
            lookup,
            cache: BTreeMap::new(),
            stale: BTreeMap::new(),
        }
    }

    /// Looks up the names that are not known or are older than
    /// [`REFRESH`] (all of them with `all`), forgets the names no longer
    /// needed, and returns the answers for `names`.
    pub async fn resolve(&mut self, names: &BTreeSet<String>, all: bool) -> Resolved {
        self.cache.retain(|n, _| names.contains(n));
        self.stale.retain(|n, _| names.contains(n));
        let due: Vec<String> = names
            .iter()
            .filter(|n| {
                all || self
                    .cache
                    .get(*n)
                    .is_none_or(|e| e.looked_up.elapsed() >= REFRESH)
            })
            .cloned()
            .collect();
        let lookup = self.lookup.clone();
        let found: Vec<(String, Result<Vec<IpAddr>, String>)> = futures::stream::iter(due)
            .map(|name| {
                let lookup = lookup.clone();
                async move {
                    let r = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup(name.clone())).await {
                        Ok(Ok(a)) if a.is_empty() => Err("no address".to_string()),
                        Ok(r) => r,
                        Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
                    };
                    (name, r)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let now = Instant::now();
        for (name, r) in found {
            match r {
                Ok(mut addrs) => {
                    addrs.sort();
                    addrs.dedup();
                    self.stale.remove(&name);
                    self.cache.insert(
                        name,
                        Entry {
                            answer: Answer::Addresses(addrs),
                            looked_up: now,
                        },
                    );
                }
                Err(e) => match self.cache.get_mut(&name) {
                    // A name that resolved before keeps its addresses.
                    Some(entry) if matches!(entry.answer, Answer::Addresses(_)) => {
                        entry.looked_up = now;
                        self.stale.insert(name, e);
                    }
                    _ => {
                        self.cache.insert(
                            name,
                            Entry {
                                answer: Answer::Failed(e),
                                looked_up: now,
                            },
                        );
                    }
                },
            }
        }
        Resolved(
            names
                .iter()
                .filter_map(|n| Some((n.clone(), self.cache.get(n)?.answer.clone())))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    type Table = Arc<Mutex<BTreeMap<String, Result<Vec<IpAddr>, String>>>>;

    /// A lookup that answers from a table the test changes.
    fn table(t: Table) -> Lookup {
        Arc::new(move |name: String| {
            let r = t.lock().unwrap().get(&name).cloned();
            Box::pin(async move {
                match r {
                    Some(r) => r,
                    // Never answers: the deadline decides.
                    None => std::future::pending().await,
                }
            })
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_keeps_the_last_good_answer_and_a_name_that_never_resolved_fails() {
        let t = Arc::new(Mutex::new(BTreeMap::new()));
        t.lock().unwrap().insert(
            "db.example".to_string(),
            Ok(vec![ip("192.0.2.2"), ip("192.0.2.1"), ip("192.0.2.2")]),
        );
        t.lock()
            .unwrap()
            .insert("gone.example".to_string(), Err("NXDOMAIN".to_string()));
        let mut r = Resolver::new(table(t.clone()));
        let names: BTreeSet<String> = ["db.example", "gone.example", "slow.example"]
            .into_iter()
            .map(String::from)
            .collect();
        let got = r.resolve(&names, false).await;
        assert_eq!(
            got.get("db.example"),
            Some(&Answer::Addresses(vec![ip("192.0.2.1"), ip("192.0.2.2")]))
        );
        assert_eq!(
            got.get("gone.example"),
            Some(&Answer::Failed("NXDOMAIN".into()))
        );
        assert_eq!(
            got.get("slow.example"),
            Some(&Answer::Failed("no answer within 5s".into()))
        );

        // DNS fails for a while: the name keeps its addresses, and says so.
        t.lock()
            .unwrap()
            .insert("db.example".to_string(), Err("SERVFAIL".to_string()));
        let again = r.resolve(&names, true).await;
        assert_eq!(again.get("db.example"), got.get("db.example"));
        assert_eq!(
            r.stale.get("db.example").map(String::as_str),
            Some("SERVFAIL")
        );

        // It comes back with a new address.
        t.lock()
            .unwrap()
            .insert("db.example".to_string(), Ok(vec![ip("192.0.2.9")]));
        let back = r.resolve(&names, true).await;
        assert_eq!(
            back.get("db.example"),
            Some(&Answer::Addresses(vec![ip("192.0.2.9")]))
        );
        assert!(r.stale.is_empty());

        // Names no longer needed are forgotten.
        let fewer: BTreeSet<String> = ["gone.example".to_string()].into();
        let left = r.resolve(&fewer, false).await;
        assert_eq!(left.0.len(), 1);
        assert_eq!(r.cache.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_reused_until_they_are_due() {
        let calls = Arc::new(Mutex::new(0));
        let c = calls.clone();
        let lookup: Lookup = Arc::new(move |_| {
            *c.lock().unwrap() += 1;
            Box::pin(async { Ok(vec!["192.0.2.1".parse().unwrap()]) })
        });
        let mut r = Resolver::new(lookup);
        let names: BTreeSet<String> = ["a.example".to_string()].into();
        r.resolve(&names, false).await;
        r.resolve(&names, false).await;
        assert_eq!(*calls.lock().unwrap(), 1);
        tokio::time::advance(REFRESH).await;
        r.resolve(&names, false).await;
        assert_eq!(*calls.lock().unwrap(), 2);
    }
}
