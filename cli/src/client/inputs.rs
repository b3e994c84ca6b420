//! Inputs: `corral submit --input FILE[::GUEST_PATH]` (each file hashed, asked for, and
//! uploaded only when the host does not have it for this caller, streamed a megabyte at a
//! time) and `corral inputs`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Args;
use corral_proto::input::{default_guest_path, guest_path_problem, mounts_problem};
use corral_proto::pb;

use super::{connect, json, rpc, Client};
use crate::args::{Format, FormatArg, HostArg};
use crate::show;

/// A file to mount in the task: `FILE[::GUEST_PATH]`.
#[derive(Clone, Debug)]
pub struct InputArg {
    /// The file here.
    pub file: PathBuf,
    /// Where the task sees it.
    pub guest: String,
}

/// Parses `FILE[::GUEST_PATH]`; the guest path defaults to `/input/<file name>`.
pub fn parse_input(arg: &str) -> Result<InputArg, String> {
    let (file, guest) = match arg.rsplit_once("::") {
        Some((file, guest)) => (file, Some(guest.to_string())),
        None => (arg, None),
    };
    let file = PathBuf::from(file);
    let guest = match guest {
        Some(guest) => guest,
        None => {
            let name = file
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| format!("{arg:?} names no file (give FILE or FILE::GUEST_PATH)"))?;
            default_guest_path(name)
        }
    };
    if let Some(problem) = guest_path_problem(&guest) {
        return Err(problem);
    }
    Ok(InputArg { file, guest })
}

/// Uploads each input the host does not have for this caller and answers the task's mounts.
/// Refuses inputs that overlap before anything is hashed.
pub async fn upload(
    client: &mut Client,
    inputs: &[InputArg],
) -> anyhow::Result<Vec<pb::InputMount>> {
    let placeholder: Vec<pb::InputMount> = inputs
        .iter()
        .map(|i| pb::InputMount {
            sha256: "0".repeat(64),
            path: i.guest.clone(),
        })
        .collect();
    if let Some(problem) = mounts_problem(&placeholder) {
        return Err(anyhow!("--input: {problem}"));
    }
    let mut mounts = Vec::with_capacity(inputs.len());
    for input in inputs {
        let sha256 = upload_one(client, &input.file).await?;
        mounts.push(pb::InputMount {
            sha256,
            path: input.guest.clone(),
        });
    }
    Ok(mounts)
}

/// The file's sha256, once the host has its bytes for this caller.
async fn upload_one(client: &mut Client, file: &std::path::Path) -> anyhow::Result<String> {
    let path = file.to_path_buf();
    let (sha256, size) =
        tokio::task::spawn_blocking(move || corral_admission::sha256_of_file(&path))
            .await?
            .with_context(|| format!("cannot read input {}", file.display()))?;
    match client
        .get_input(pb::GetInputRequest {
            sha256: sha256.clone(),
        })
        .await
    {
        Ok(_) => return Ok(sha256),
        Err(status) if status.code() == tonic::Code::NotFound => {}
        Err(status) => return Err(rpc(status)),
    }
    // Read on a blocking thread a megabyte at a time, as the host takes them.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (path, sha) = (file.to_path_buf(), sha256.clone());
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut first = true;
        loop {
            let mut chunk = vec![0u8; corral_proto::MODULE_CHUNK_BYTES];
            let n = f.read(&mut chunk)?;
            if n == 0 && !first {
                return Ok(());
            }
            chunk.truncate(n);
            let message = pb::UploadInputRequest {
                size_bytes: if first { size } else { 0 },
                sha256: if first { sha.clone() } else { String::new() },
                chunk: chunk.into(),
            };
            first = false;
            if tx.blocking_send(message).is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    let answer = client
        .upload_input(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader
        .await?
        .with_context(|| format!("cannot read input {}", file.display()))?;
    let uploaded = answer.map_err(rpc)?.into_inner();
    Ok(uploaded.sha256)
}

/// Arguments of `corral inputs`.
#[derive(Args, Debug)]
pub struct InputsArgs {
    #[command(flatten)]
    host: HostArg,
    /// With an admin's token: this tenant's inputs and storage (default: every input).
    #[arg(long, value_name = "TENANT")]
    tenant: Option<String>,
    #[command(flatten)]
    format: FormatArg,
}

/// `corral inputs`: SHA256 SIZE TASKS FETCHES LAST-USED, then the storage used.
pub async fn inputs(args: InputsArgs) -> anyhow::Result<ExitCode> {
    let mut client = connect(&args.host).await?;
    let listed = client
        .list_inputs(pb::ListInputsRequest {
            tenant: args.tenant.unwrap_or_default(),
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let listed = json::Inputs::from(&listed);
    let shown = match args.format.format {
        Format::Json => show::json(&listed),
        Format::Text => {
            let rows: Vec<Vec<String>> = listed
                .inputs
                .iter()
                .map(|i| {
                    vec![
                        i.sha256.clone(),
                        show::size(i.size_bytes),
                        i.tasks.to_string(),
                        i.fetches.to_string(),
                        show::age(i.last_used_ms),
                    ]
                })
                .collect();
            show::table(&["SHA256", "SIZE", "TASKS", "FETCHES", "LAST USED"], &rows).and_then(
                |()| {
                    let limit = listed
                        .limit_bytes
                        .map_or(String::new(), |l| format!(" of {}", show::size(l)));
                    show::line(&format!("{} used{limit}", show::size(listed.used_bytes)))
                },
            )
        }
    };
    show::ignore_closed_pipe(shown)?;
    Ok(ExitCode::SUCCESS)
}
