//! What a Cassandra instance runs: its copy of `deploy/cassandra/cassandra.yaml` ([`Yaml`]) and the JVM
//! command line ([`daemon`]) with the options of `jvm17-server.options`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::environments::root;
use crate::servers::{io, Error};

pub(super) const DAEMON: &str = "org.apache.cassandra.service.CassandraDaemon";

pub(super) fn deploy() -> PathBuf {
    root().join("deploy/cassandra")
}

/// `deploy/cassandra/cassandra.yaml` with some `key: value` lines replaced; a key that is not in the
/// template is an error (the template changed), never a silent no-op.
pub(super) struct Yaml {
    text: String,
    path: PathBuf,
}

impl Yaml {
    pub(super) fn template() -> Result<Self, Error> {
        let path = deploy().join("cassandra.yaml");
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        Ok(Self { text, path })
    }

    /// Replaces the line that starts with `prefix` (after indentation) by `line` (indentation kept).
    pub(super) fn set(&mut self, prefix: &str, line: &str) -> Result<&mut Self, Error> {
        let mut found = false;
        let lines: Vec<String> = self
            .text
            .lines()
            .map(|l| {
                let body = l.trim_start();
                if !found && body.starts_with(prefix) {
                    found = true;
                    format!("{}{line}", &l[..l.len() - body.len()])
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if !found {
            return Err(Error::Failed(format!(
                "no '{prefix}' line in {} to replace",
                self.path.display()
            )));
        }
        self.text = lines.join("\n") + "\n";
        Ok(self)
    }

    pub(super) fn key(&mut self, key: &str, value: &str) -> Result<&mut Self, Error> {
        self.set(&format!("{key}:"), &format!("{key}: {value}"))
    }

    pub(super) fn append(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    pub(super) fn write(&self, to: &Path) -> Result<(), Error> {
        fs::write(to, &self.text).map_err(io(to))
    }
}

/// The JDK 17 options every Cassandra JVM here gets: Cassandra's own (G1, JPMS exports and opens,
/// netty), every line of `jvm17-server.options` that starts with '-', and the module exports
/// `bin/cassandra.in.sh` adds when the JDK has those modules (CASSANDRA-19001).
pub(super) fn jvm_opts(java: &Path) -> Result<Vec<String>, Error> {
    let path = deploy().join("jvm17-server.options");
    let text = fs::read_to_string(&path).map_err(io(&path))?;
    let mut args: Vec<String> = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| l.starts_with('-'))
        .flat_map(|l| l.split_whitespace().map(str::to_owned))
        .collect();
    let modules = Command::new(java)
        .arg("--list-modules")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let has = |m: &str| modules.lines().any(|l| l.starts_with(&format!("{m}@")));
    if has("jdk.attach") {
        args.extend(["--add-exports", "jdk.attach/sun.tools.attach=ALL-UNNAMED"].map(String::from));
    }
    if has("jdk.compiler") {
        args.extend(
            [
                "--add-exports",
                "jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
                "--add-opens",
                "jdk.compiler/com.sun.tools.javac=ALL-UNNAMED",
            ]
            .map(String::from),
        );
    }
    Ok(args)
}

/// Where one instance lives and what it adds to the common options.
pub(super) struct Instance<'a> {
    pub(super) heap: &'a str,
    pub(super) yaml: &'a Path,
    pub(super) data: &'a Path,
    pub(super) tmp: &'a Path,
    pub(super) extra: Vec<String>,
}

/// `java ARGS`: the JVM options, the heap, the paths, the extra properties and the main class.
pub(super) fn daemon(java: &Path, lib: &Path, i: &Instance) -> Result<Command, Error> {
    let (tmp, data) = (i.tmp.display(), i.data.display());
    let mut args = jvm_opts(java)?;
    args.extend([
        format!("-Xms{}", i.heap),
        format!("-Xmx{}", i.heap),
        "-Xss256k".into(),
        "-ea".into(),
        "-da:net.openhft...".into(),
        "-XX:+UseThreadPriorities".into(),
        "-XX:+UseTLAB".into(),
        "-XX:+ResizeTLAB".into(),
        "-XX:+PerfDisableSharedMem".into(),
        "-XX:+ExitOnOutOfMemoryError".into(),
        "-Djava.net.preferIPv4Stack=true".into(),
        "-Dchronicle.analytics.disable=true".into(),
        format!("-Djava.io.tmpdir={tmp}"),
        format!("-Djna.tmpdir={tmp}"),
        format!(
            "-Dcassandra.config=file://{}",
            i.yaml.display().to_string().replace(' ', "%20")
        ),
        "-Dcassandra-foreground=yes".into(),
        format!("-Dcassandra.storagedir={data}"),
        format!("-Dcassandra.logdir={data}/logs"),
        format!(
            "-Dlogback.configurationFile={}",
            deploy().join("logback.xml").display()
        ),
        "-Dcassandra.skip_wait_for_gossip_to_settle=0".into(),
    ]);
    args.extend(i.extra.iter().cloned());
    args.extend(["-cp".into(), format!("{}/*", lib.display()), DAEMON.into()]);
    fs::create_dir_all(i.data).map_err(io(i.data))?;
    let _ = fs::remove_dir_all(i.tmp);
    fs::create_dir_all(i.tmp).map_err(io(i.tmp))?;
    let mut cmd = Command::new(java);
    cmd.args(args);
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_replaces_keys_in_place_and_refuses_unknown_ones() {
        let mut yaml = Yaml::template().expect("deploy/cassandra/cassandra.yaml");
        yaml.key("native_transport_port", "9999")
            .unwrap()
            .set("- seeds:", "- seeds: \"127.0.0.9:7999\"")
            .unwrap();
        assert!(yaml.text.contains("\nnative_transport_port: 9999\n"));
        assert!(yaml.text.contains("\n      - seeds: \"127.0.0.9:7999\"\n"));
        assert!(!yaml.text.contains("native_transport_port: 9042"));
        assert!(matches!(
            yaml.key("no_such_key", "1"),
            Err(Error::Failed(_))
        ));
    }

    #[test]
    fn jvm_options_are_the_dash_lines_of_the_options_file() {
        let opts = jvm_opts(Path::new("/nonexistent/java")).expect("jvm17-server.options");
        assert!(!opts.is_empty());
        assert!(opts
            .iter()
            .all(|o| !o.contains('#') && !o.trim().is_empty()));
        assert!(opts
            .iter()
            .any(|o| o.starts_with("--add-opens") || o.starts_with("-XX:")));
    }
}
