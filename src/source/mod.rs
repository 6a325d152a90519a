//! Sources of the [`crate::cluster::Cluster`] snapshot.

pub mod files;
pub mod kube;
pub mod legacy;
pub mod manifest;
mod yaml_fast;
