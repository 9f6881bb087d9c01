//! Watching files for changes: one mechanism for certificate reload (and, later, config and plugin
//! reload). Parent directories are watched, not the files, because editors and certbot replace
//! files (rename, symlink swap) rather than writing them in place.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet period after the last event before a change is reported, so a burst of writes (cert,
/// then key) is one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// Reloads that a watched file (or SIGHUP, or the admin API) set off, by result: the config's and
/// the TLS certificate's. Counted here, where reloads start, and exported by the metrics.
#[derive(Debug, Default)]
pub(crate) struct Reloads {
    pub(crate) ok: std::sync::atomic::AtomicU64,
    pub(crate) failed: std::sync::atomic::AtomicU64,
}

/// Keeps the OS watch alive; dropping it stops watching.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
    rx: mpsc::UnboundedReceiver<()>,
}

impl FileWatch {
    /// Watches `files` (which need not exist yet, but their directories must).
    pub fn new(files: &[PathBuf]) -> notify::Result<Self> {
        let names: HashSet<PathBuf> = files.iter().map(|f| absolute(f)).collect();
        let dirs: HashSet<PathBuf> = names
            .iter()
            .map(|f| {
                f.parent()
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            })
            .collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                let Ok(event) = res else { return };
                if !changes_content(&event.kind) {
                    return;
                }
                // A symlink swap (certbot's live/ dir) shows up as an event on the link's name, so
                // matching on names in the watched directories catches it too.
                if event.paths.iter().any(|p| names.contains(p)) || event.paths.is_empty() {
                    let _ = tx.send(());
                }
            })?;
        for dir in &dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(Self {
            _watcher: watcher,
            rx,
        })
    }

    /// Waits for the next change, after the debounce period. `None` once the watcher is gone.
    pub async fn changed(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => return Some(()),
            }
        }
    }
}

/// Whether an event can mean new content: a write, a create, a rename, a removal, a metadata
/// change (`touch`), or one the platform does not classify. Opening or reading a file (a backup
/// job, `sha256sum`, the gateway itself loading a plugin) is not a change.
fn changes_content(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Any
        | EventKind::Create(_)
        | EventKind::Modify(_)
        | EventKind::Remove(_)
        | EventKind::Other => true,
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
