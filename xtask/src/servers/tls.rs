//! The test CA and a server certificate for 127.0.0.1, made once per set with `openssl` in
//! `<state>/tls/`: `ca.pem` (what clients trust), `server.key`, `server.crt`, and `server.pem` (the
//! PKCS#8 key and the certificate in one file, for Cassandra's PEMBasedSslContextFactory). PostgreSQL
//! gets copies of the same certificate.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io, tools, Error};

const SERVER_EXT: &str = "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
    basicConstraints=critical,CA:FALSE\n\
    keyUsage=critical,digitalSignature,keyEncipherment\n\
    extendedKeyUsage=serverAuth\n";

/// The set's TLS directory, its files made first if missing.
pub fn files(state_dir: &Path) -> Result<PathBuf, Error> {
    let dir = state_dir.join("tls");
    if ["server.pem", "ca.pem"]
        .iter()
        .all(|f| fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
    {
        return Ok(dir);
    }
    tools::need("openssl", "openssl")?;
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    fs::write(dir.join("server.ext"), SERVER_EXT).map_err(io(&dir))?;
    #[rustfmt::skip]
    let steps: [&[&str]; 4] = [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
          "-days", "3650", "-subj", "/CN=score-worker test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
          "-subj", "/CN=127.0.0.1"],
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
          "-CAcreateserial", "-out", "server.crt", "-days", "3650", "-extfile", "server.ext"],
        &["pkcs8", "-topk8", "-nocrypt", "-in", "server.key", "-out", "server.pk8"],
    ];
    for args in steps {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .map_err(io(Path::new("openssl")))?;
        if !out.status.success() {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            return Err(Error::Failed(format!(
                "openssl {} failed in {} ({})",
                args[0],
                dir.display(),
                out.status
            )));
        }
    }
    let mut pem = fs::read(dir.join("server.pk8")).map_err(io(&dir))?;
    pem.extend(fs::read(dir.join("server.crt")).map_err(io(&dir))?);
    let partial = dir.join("server.pem.partial");
    fs::write(&partial, pem).map_err(io(&partial))?;
    fs::rename(&partial, dir.join("server.pem")).map_err(io(&partial))?;
    Ok(dir)
}
