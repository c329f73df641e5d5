//! The README's set-up scripts on a machine that lacks what they need.

use std::path::Path;
use std::process::Command;

/// `./scripts/demo.sh` run by a user who is not root, on a machine without cmake and node:
/// it stops at once and names the one command that installs them (as root it installs them
/// itself, as the test command does).
#[test]
fn the_demo_names_the_one_command_that_installs_what_is_missing() {
    let bin = tempfile::tempdir().unwrap();
    // The user running the script must be able to look into it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // Only what the check itself uses: no cmake, node or npm. `cargo` is only looked for.
    for tool in [
        "bash",
        "env",
        "dirname",
        "id",
        "dpkg",
        "dpkg-query",
        "gcc",
        "make",
        "pkg-config",
        "curl",
    ] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found: apt-get install it"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    std::os::unix::fs::symlink("/usr/bin/gcc", bin.path().join("cc")).unwrap();
    std::os::unix::fs::symlink("/bin/true", bin.path().join("cargo")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/demo.sh");
    let out = Command::new("/usr/bin/setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/bash",
        ])
        .arg(&script)
        .env_clear()
        .env("PATH", bin.path())
        .output()
        .expect("setpriv (util-linux) runs the script as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("missing: cmake nodejs npm"), "{stderr}");
    assert!(
        stderr.contains(
            "sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends cmake nodejs npm'"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("building"),
        "it must stop before building: {stderr}"
    );
}
