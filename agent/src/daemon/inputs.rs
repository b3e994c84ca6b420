//! Inputs on the agent: each fetched from the host once, kept in `<data_dir>/inputs` as
//! `<sha256>.input` (read-only, written through a synced temporary file and a rename, its bytes
//! checked against its name as they arrive, and checked again at its first use by this
//! process), evicted least recently used past `max_cache_bytes`; and mounted read-only in a
//! task by hard links under the attempt's own directory, so that an eviction while it runs
//! takes nothing from it.

use std::path::{Path, PathBuf};

use corral_proto::pb;
use sha2::Digest;

use super::{lock, Agent, Client, Key};
use crate::sandbox::DirGrant;

/// A task's inputs, mounted: the attempt's directory of links (removed when dropped) and the
/// grants that show it to the guest.
pub(super) struct Mounted {
    root: PathBuf,
    pub(super) grants: Vec<DirGrant>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.root) {
            tracing::warn!(path = %self.root.display(), error = %e, "cannot remove a task's inputs");
        }
    }
}

impl Agent {
    fn inputs_dir(&self) -> PathBuf {
        self.config.data_dir.join("inputs")
    }

    /// Mounts `spec`'s inputs for attempt `key`: each fetched (or found kept), then linked at
    /// its guest path under `<data_dir>/work/<task>-<attempt>.inputs`, each top directory of
    /// those paths granted read-only. What fails here is the agent's (`agent_error`).
    pub(super) async fn mount_inputs(
        &self,
        key: &Key,
        spec: &pb::TaskSpec,
        client: &Client,
    ) -> Result<Option<Mounted>, String> {
        if spec.inputs.is_empty() {
            return Ok(None);
        }
        let agent = &self.config.id;
        if let Some(problem) = corral_proto::input::mounts_problem(&spec.inputs) {
            return Err(format!(
                "agent {agent} was launched a task whose inputs are bad: {problem}"
            ));
        }
        let root = self
            .config
            .data_dir
            .join("work")
            .join(format!("{}-{}.inputs", key.0, key.1));
        let mounted = Mounted {
            root: root.clone(),
            grants: Vec::new(),
        };
        let mut mounted = mounted;
        for input in &spec.inputs {
            let link = root.join(input.path.trim_start_matches('/'));
            // Evicted between its check and its link (a cache smaller than what runs at
            // once): fetched again, once.
            let mut tries = 0;
            loop {
                let kept = self.input(&input.sha256, client.clone()).await?;
                let made = {
                    let (kept, link) = (kept.clone(), link.clone());
                    tokio::task::spawn_blocking(move || {
                        std::fs::create_dir_all(
                            link.parent().expect("a guest path has a directory"),
                        )?;
                        std::fs::hard_link(&kept, &link)
                    })
                    .await
                    .map_err(|e| e.to_string())?
                };
                match made {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries == 0 => tries += 1,
                    Err(e) => {
                        return Err(format!(
                            "agent {agent} cannot mount input {} at {}: {e}",
                            input.sha256,
                            link.display()
                        ))
                    }
                }
            }
        }
        let mut tops: Vec<&str> = spec
            .inputs
            .iter()
            .filter_map(|i| i.path.trim_start_matches('/').split('/').next())
            .collect();
        tops.sort_unstable();
        tops.dedup();
        mounted.grants = tops
            .into_iter()
            .map(|top| DirGrant::read_only(root.join(top), format!("/{top}")))
            .collect();
        Ok(Some(mounted))
    }

    /// The kept file of input `sha256`: checked once per process, else fetched. One fetch per
    /// input at a time, however many of its tasks launch together.
    async fn input(&self, sha256: &str, mut client: Client) -> Result<PathBuf, String> {
        let fetch_lock = lock(&self.fetching)
            .entry(format!("input:{sha256}"))
            .or_default()
            .clone();
        let kept = {
            let _fetching = fetch_lock.lock().await;
            self.kept_or_fetched_input(sha256, &mut client).await
        };
        self.fetch_done(&format!("input:{sha256}"), &fetch_lock);
        kept
    }

    async fn kept_or_fetched_input(
        &self,
        sha256: &str,
        client: &mut Client,
    ) -> Result<PathBuf, String> {
        let path = self.inputs_dir().join(format!("{sha256}.input"));
        if lock(&self.verified_inputs).contains(sha256) && path.exists() {
            crate::lru::touch(&path);
            return Ok(path);
        }
        // Kept by an earlier run of the agent: used only if its bytes hash to its name.
        let checked = {
            let (path, sha) = (path.clone(), sha256.to_string());
            tokio::task::spawn_blocking(move || match corral_admission::sha256_of_file(&path) {
                Ok((digest, _)) if digest == sha => true,
                Ok(_) => {
                    tracing::warn!(
                        sha256 = sha,
                        "the kept copy of an input is damaged: fetching it again"
                    );
                    let _ = std::fs::remove_file(&path);
                    false
                }
                Err(_) => false,
            })
            .await
            .unwrap_or(false)
        };
        if !checked {
            self.fetch_input(sha256, &path, client).await?;
        }
        crate::lru::touch(&path);
        lock(&self.verified_inputs).insert(sha256.to_string());
        // The input just used is never evicted for room, even when it alone is larger than
        // the cache: a task of it must run.
        let (dir, max, keep) = (self.inputs_dir(), self.config.max_cache_bytes, path.clone());
        let _ = tokio::task::spawn_blocking(move || {
            crate::lru::evict(&dir, ".input", max, Some(&keep));
        })
        .await;
        Ok(path)
    }

    /// Streams input `sha256` from the host into `path`: a temporary file, hashed as it is
    /// written, checked, synced, made read-only and renamed into place.
    async fn fetch_input(
        &self,
        sha256: &str,
        path: &Path,
        client: &mut Client,
    ) -> Result<(), String> {
        let agent = &self.config.id;
        let fetch_error = |e: tonic::Status| {
            format!(
                "agent {agent} cannot fetch input {sha256} from the host: {}",
                e.message()
            )
        };
        let mut stream = client
            .fetch_input(pb::FetchInputRequest {
                sha256: sha256.into(),
            })
            .await
            .map_err(fetch_error)?
            .into_inner();
        let part = path.with_extension("part");
        let local = |e: std::io::Error| format!("agent {agent} cannot keep input {sha256}: {e}");
        let mut file = {
            let part = part.clone();
            // A .part left by a crash may be read-only already.
            tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&part);
                std::fs::File::create(part)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(local)?
        };
        let mut hasher = sha2::Sha256::new();
        let (mut size, mut received) = (None, 0u64);
        let written: Result<(), String> = async {
            while let Some(chunk) = stream.message().await.map_err(fetch_error)? {
                size.get_or_insert(chunk.size_bytes);
                received += chunk.chunk.len() as u64;
                if size.is_some_and(|s| received > s) {
                    return Err(format!(
                        "agent {agent} was sent more of input {sha256} than its size"
                    ));
                }
                let (f, h) = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    hasher.update(&chunk.chunk);
                    file.write_all(&chunk.chunk).map(|()| (file, hasher))
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(local)?;
                (file, hasher) = (f, h);
            }
            if let Some(size) = size.filter(|s| *s != received) {
                return Err(format!(
                    "agent {agent}'s fetch of input {sha256} ended after {received} of its \
                     {size} bytes"
                ));
            }
            let got = corral_admission::sha256_hex(&hasher.clone().finalize().into());
            if got != sha256 {
                return Err(format!(
                    "agent {agent} fetched {received} bytes for input {sha256} that hash to {got}"
                ));
            }
            let (part, path) = (part.clone(), path.to_path_buf());
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                use std::os::unix::fs::PermissionsExt;
                file.sync_all()?;
                std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o400))?;
                std::fs::rename(&part, &path)?;
                std::fs::File::open(path.parent().expect("in the inputs dir"))?.sync_all()
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(local)
        }
        .await;
        if written.is_err() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(part)).await;
        } else {
            tracing::info!(sha256, bytes = received, "input fetched");
        }
        written
    }
}
