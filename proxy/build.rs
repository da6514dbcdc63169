//! Stamps the build with its source revision, for `dnslens_build_info{revision}` and the
//! `--version` line: `DNSLENS_REVISION` when the build sets it (an image built from a
//! tarball), else `git rev-parse --short=12 HEAD` (with `-dirty` for uncommitted changes),
//! else `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-env-changed=DNSLENS_REVISION");
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        // A commit moves HEAD or the branch it names.
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/refs/heads");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        println!("cargo:rerun-if-changed={dir}/index");
    }
    let revision = std::env::var("DNSLENS_REVISION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            let head = git(&["rev-parse", "--short=12", "HEAD"])?;
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            Some(if dirty { format!("{head}-dirty") } else { head })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DNSLENS_REVISION={revision}");
}
