//! Integration tests against a real nats-server and a real Cassandra on loopback
//! (`make test` starts both through `cargo xtask up dev`).

mod buckets;
mod churn;
mod cli;
mod clocks;
mod deadletter_outage;
mod deadletters;
mod dlq;
mod end_to_end;
mod faults;
mod hostile;
mod http;
mod invariant;
mod knobs;
mod observe;
mod ops;
mod oversized;
mod postgres;
mod read;
mod recovery;
mod support;
mod topology;
mod upgrades;
mod writes;
