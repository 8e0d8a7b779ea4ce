//! An ext4 filesystem on a loop device, for what the card sees: its own
//! image file in a temporary directory, attached with `losetup`, mounted
//! with `mount`, and counted from `/sys/block/loopN/stat`, which includes
//! the journal and the metadata. Needs root (the tests run as root).
//!
//! Everything it attaches or mounts it unmounts and detaches in `Drop`,
//! and it touches no device it did not attach itself.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::{find_binary, wait_until};

pub struct LoopFs {
    /// Holds the image and the mount point.
    dir: TempDir,
    image: PathBuf,
    device: Option<String>,
    mounted: bool,
}

/// How the loop device reads and writes its image file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Io {
    /// Through the page cache of the image file.
    Buffered,
    /// With O_DIRECT: what the filesystem wrote is in the image file at
    /// once, so a copy taken while its writer is stopped is what a power
    /// cut would leave.
    Direct,
}

impl LoopFs {
    /// A fresh ext4 filesystem of `bytes`, mkfs defaults except that its
    /// inode tables and journal are written at mkfs rather than lazily by
    /// the kernel after mounting (which would count as our writes).
    pub fn new(bytes: u64, io: Io) -> LoopFs {
        assert!(
            super::is_root(),
            "the card tests attach loop devices and mount filesystems: run them as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("card.img");
        run(Command::new(find_binary("truncate", "coreutils"))
            .arg("-s")
            .arg(bytes.to_string())
            .arg(&image));
        run(Command::new(find_binary("mkfs.ext4", "e2fsprogs"))
            .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .arg(&image));
        Self::attach(dir, image, io)
    }

    /// A filesystem on a copy of another's image, as a card taken out of
    /// a gateway after a power cut: checked and repaired by `e2fsck -p`
    /// (as at boot) and mounted. Panics if e2fsck finds what it cannot fix
    /// on its own.
    pub fn restored(image: &Path, io: Io) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("card.img");
        fs::copy(image, &copy).unwrap();
        e2fsck("-p", &copy);
        Self::attach(dir, copy, io)
    }

    fn attach(dir: TempDir, image: PathBuf, io: Io) -> LoopFs {
        let mut losetup = Command::new(find_binary("losetup", "mount"));
        losetup.args(["--find", "--show"]);
        if io == Io::Direct {
            losetup.arg("--direct-io=on");
        }
        let device = run(losetup.arg(&image)).trim().to_owned();
        assert!(device.starts_with("/dev/loop"), "losetup gave {device:?}");
        let mut fs = LoopFs {
            dir,
            image,
            device: Some(device),
            mounted: false,
        };
        fs::create_dir_all(fs.path()).unwrap();
        fs.mount();
        fs
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// The backing image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    fn device(&self) -> &str {
        self.device.as_deref().expect("attached")
    }

    /// Bytes the device has written since it was attached (sectors of
    /// 512 bytes, the journal and metadata included).
    pub fn written_bytes(&self) -> u64 {
        let name = self.device().trim_start_matches("/dev/");
        let stat = fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
        let sectors: u64 = stat
            .split_whitespace()
            .nth(6)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no sectors written in {stat:?}"));
        sectors * 512
    }

    /// Bytes free to an unprivileged writer, as `statvfs` says.
    pub fn available(&self) -> u64 {
        self.df("avail")
    }

    /// The filesystem's size in bytes, as `statvfs` says.
    pub fn size(&self) -> u64 {
        self.df("size")
    }

    fn df(&self, field: &str) -> u64 {
        let out = run(Command::new(find_binary("df", "coreutils"))
            .arg("--block-size=1")
            .arg(format!("--output={field}"))
            .arg(self.path()));
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("df gave {out:?}"))
    }

    /// Fills the filesystem with a file of its own (`fallocate`) until only
    /// `left` bytes are available; returns the file.
    pub fn fill_leaving(&self, left: u64) -> PathBuf {
        let filler = self.path().join("filler");
        let size = self.available().checked_sub(left).expect("room to fill");
        run(Command::new(find_binary("fallocate", "util-linux"))
            .arg("-l")
            .arg(size.to_string())
            .arg(&filler));
        filler
    }

    /// Fails the filesystem as a card's errors do: ext4 is mounted with
    /// `errors=remount-ro` (as Debian installs root filesystems) and an
    /// error is raised (`/sys/fs/ext4/loopN/trigger_fs_error`), so the
    /// kernel turns it read-only at once, files open for writing or not.
    /// (`mount -o remount,ro` is refused while a file is open for writing,
    /// and the gateway keeps its spool segment open.)
    pub fn fail_read_only(&self) {
        let name = self.device().trim_start_matches("/dev/");
        fs::write(
            format!("/sys/fs/ext4/{name}/trigger_fs_error"),
            "leasegate test: card failed",
        )
        .unwrap();
        let path = self.path().display().to_string();
        let read_only = || {
            let mounts = fs::read_to_string("/proc/mounts").unwrap();
            mounts
                .lines()
                .find(|l| l.split(' ').nth(1) == Some(path.as_str()))
                .and_then(|l| l.split(' ').nth(3))
                .is_some_and(|o| o.split(',').any(|o| o == "ro" || o == "emergency_ro"))
        };
        assert!(
            wait_until(Duration::from_secs(5), read_only),
            "{path} is not read-only after the error"
        );
    }

    /// What a reboot does to a card that failed: unmounted, checked and
    /// repaired (`e2fsck -fy`), mounted again. Whatever uses it must have
    /// stopped.
    pub fn check_and_remount(&mut self) {
        assert!(self.unmount(), "cannot unmount {}", self.path().display());
        e2fsck("-fy", Path::new(self.device()));
        self.mount();
    }

    /// Unmounts, trying for 10 s: a process this test stopped may still be
    /// closing files. False if it stayed mounted.
    fn unmount(&mut self) -> bool {
        let umount = find_binary("umount", "mount");
        let done = wait_until(Duration::from_secs(10), || {
            Command::new(&umount)
                .arg(self.path())
                .status()
                .is_ok_and(|s| s.success())
        });
        self.mounted &= !done;
        done
    }

    fn mount(&mut self) {
        run(Command::new(find_binary("mount", "mount"))
            .args(["-o", "errors=remount-ro"])
            .arg(self.device())
            .arg(self.path()));
        self.mounted = true;
    }

    /// Unmounts and detaches (also done on drop); the image stays until
    /// the value goes.
    pub fn detach(&mut self) {
        if self.mounted && !self.unmount() {
            // Lazily, so that the device can still be detached.
            let _ = Command::new(find_binary("umount", "mount"))
                .arg("-l")
                .arg(self.path())
                .status();
            self.mounted = false;
        }
        if let Some(device) = self.device.take() {
            let _ = Command::new(find_binary("losetup", "mount"))
                .arg("-d")
                .arg(&device)
                .status();
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Checks (and repairs, as `mode` says) the filesystem at `target`;
/// panics unless e2fsck found it clean or fixed it (exit 0 or 1: a journal
/// replayed counts as fixed).
fn e2fsck(mode: &str, target: &Path) {
    let out = Command::new(find_binary("e2fsck", "e2fsprogs"))
        .arg(mode)
        .arg(target)
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "e2fsck {mode} {}: {}\n{}{}",
        target.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a setup command, panicking with its output if it fails.
fn run(command: &mut Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
