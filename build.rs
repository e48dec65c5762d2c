//! Records the git revision the binary is built from, for `score-worker --version` and the `revision`
//! label of `score_worker_build_info`: `SCORE_WORKER_REVISION` when set (an image built from a context
//! without `.git` passes it as a build argument), else `git rev-parse --short=12 HEAD`, else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SCORE_WORKER_REVISION");
    let revision = std::env::var("SCORE_WORKER_REVISION")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .or_else(|| {
            // A new commit moves the branch's ref (or packed-refs), not HEAD itself.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(p) = git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|r| git(&["rev-parse", "--git-path", &r]))
            {
                println!("cargo:rerun-if-changed={p}");
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SCORE_WORKER_REVISION={revision}");
}
