//! Opening a database session: nodes, credentials, TLS, the consistency of every statement, timeouts
//! and token-aware load balancing.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::client::PoolSize;
use scylla::errors::NewSessionError;
use scylla::policies::load_balancing::DefaultPolicy;

use super::StoreError;
use crate::config::{Consistency, ScyllaConfig, TlsFiles};

/// Failure to open a session.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to the database at {nodes:?}")]
    Session {
        nodes: Vec<String>,
        #[source]
        source: NewSessionError,
    },
    #[error("database TLS set-up failed")]
    Tls(#[from] TlsError),
    #[error(
        "preparing statements failed (is the schema applied? run `score-worker migrate`): {0}"
    )]
    Prepare(#[source] StoreError),
    #[error(transparent)]
    Datacenter(#[from] DatacenterError),
    /// The keyspace refuses this writer: another bucket count, a schema outside this build's
    /// window, or a `LOCAL_*` level on several datacenters.
    #[error(transparent)]
    Schema(Box<crate::schema::SchemaError>),
}

/// The configured consistency and datacenter do not fit the cluster.
#[derive(Debug, thiserror::Error)]
pub enum DatacenterError {
    #[error(
        "scylla.consistency {consistency:?} counts replicas of one datacenter, and the cluster has \
         {datacenters:?}: set scylla.local_datacenter to this worker's datacenter"
    )]
    NoLocalDatacenter {
        consistency: Consistency,
        datacenters: Vec<String>,
    },
    #[error("scylla.local_datacenter `{configured}` is not one of the cluster's datacenters {datacenters:?}")]
    UnknownDatacenter {
        configured: String,
        datacenters: Vec<String>,
    },
}

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// The driver's consistency for the configured one.
pub fn consistency(c: Consistency) -> scylla::statement::Consistency {
    use scylla::statement::Consistency as Driver;
    match c {
        Consistency::One => Driver::One,
        Consistency::Two => Driver::Two,
        Consistency::Three => Driver::Three,
        Consistency::Quorum => Driver::Quorum,
        Consistency::All => Driver::All,
        Consistency::LocalQuorum => Driver::LocalQuorum,
        Consistency::EachQuorum => Driver::EachQuorum,
        Consistency::LocalOne => Driver::LocalOne,
    }
}

/// Opens a session with the configured nodes, credentials, TLS, consistency and timeouts.
pub async fn connect(config: &ScyllaConfig) -> Result<Session, ConnectError> {
    let mut policy = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &config.local_datacenter {
        policy = policy
            .prefer_datacenter(dc.clone())
            .permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(consistency(config.consistency))
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(policy.build())
        .build();
    let per_shard = NonZeroUsize::new(config.connections_per_shard).unwrap_or(NonZeroUsize::MIN);
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.nodes)
        .pool_size(PoolSize::PerShard(per_shard))
        .connection_timeout(config.connect_timeout)
        .default_execution_profile_handle(profile.into_handle());
    if let Some((user, password)) = config.credentials() {
        builder = builder.user(user, password);
    }
    if config.tls.enabled {
        builder = builder.tls_context(Some(tls_config(&config.tls)?));
    }
    let session = builder
        .build()
        .await
        .map_err(|source| ConnectError::Session {
            nodes: config.nodes.clone(),
            source,
        })?;
    check_datacenters(config, datacenters(&session))?;
    Ok(session)
}

/// The datacenters of the cluster's nodes as the driver knows them, sorted, once each.
pub fn datacenters(session: &Session) -> Vec<String> {
    let mut datacenters: Vec<String> = session
        .get_cluster_state()
        .get_nodes_info()
        .iter()
        .filter_map(|node| node.datacenter.clone())
        .collect();
    datacenters.sort_unstable();
    datacenters.dedup();
    datacenters
}

/// A `LOCAL_*` level on a cluster of several datacenters needs to know which one is local, or the
/// driver may coordinate from another datacenter, whose quorum says nothing about this one's.
fn check_datacenters(
    config: &ScyllaConfig,
    datacenters: Vec<String>,
) -> Result<(), DatacenterError> {
    match &config.local_datacenter {
        Some(dc) if !datacenters.is_empty() && !datacenters.contains(dc) => {
            Err(DatacenterError::UnknownDatacenter {
                configured: dc.clone(),
                datacenters,
            })
        }
        None if config.consistency.is_local() && datacenters.len() > 1 => {
            Err(DatacenterError::NoLocalDatacenter {
                consistency: config.consistency,
                datacenters,
            })
        }
        _ => Ok(()),
    }
}

fn pem_error(path: &Path) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + '_ {
    move |source| TlsError::Pem {
        path: path.to_path_buf(),
        source,
    }
}

fn tls_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &files.ca_file {
        Some(ca) => {
            for cert in CertificateDer::pem_file_iter(ca).map_err(pem_error(ca))? {
                roots.add(cert.map_err(pem_error(ca))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match files.client_cert() {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(pem_error(cert))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(pem_error(key))?;
            builder.with_client_auth_cert(certs, key)?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dcs(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn local_levels_on_several_datacenters_need_the_local_one() {
        let mut c = crate::config::Config::defaults().scylla;
        assert!(check_datacenters(&c, dcs(&["dc1"])).is_ok());
        let err = check_datacenters(&c, dcs(&["dc1", "dc2"])).unwrap_err();
        assert!(err.to_string().contains("scylla.local_datacenter"), "{err}");
        c.consistency = Consistency::Quorum;
        assert!(check_datacenters(&c, dcs(&["dc1", "dc2"])).is_ok());
        c.consistency = Consistency::LocalQuorum;
        c.local_datacenter = Some("dc2".into());
        assert!(check_datacenters(&c, dcs(&["dc1", "dc2"])).is_ok());
        c.local_datacenter = Some("dc3".into());
        let err = check_datacenters(&c, dcs(&["dc1", "dc2"])).unwrap_err();
        assert!(err.to_string().contains("dc3"), "{err}");
    }
}
