//! Where the cluster commands find their host and token, and `corral login`, which saves them.
//!
//! Each setting comes from the first of: its flag, its environment variable, the profile
//! (`$XDG_CONFIG_HOME/corral/config.toml`, else `~/.config/corral/config.toml`, mode 0600,
//! written by `corral login`), the default. The token's flags are `--token` then
//! `--token-file`, then `CORRAL_TOKEN`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::args::HostArg;

/// The host a command reaches when nothing names one.
pub const DEFAULT_HOST: &str = "http://127.0.0.1:7700";

/// What `corral login` saves.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The host's URL.
    pub host: Option<String>,
    /// The token.
    pub token: Option<String>,
    /// The CA of an https:// host.
    pub tls_ca: Option<PathBuf>,
}

/// The profile's path.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("corral").join("config.toml"))
}

/// The saved profile; none when there is no file. A file that does not parse is an error
/// naming it.
pub fn load() -> anyhow::Result<Profile> {
    let Some(path) = path() else {
        return Ok(Profile::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .with_context(|| format!("the profile {} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(anyhow!("cannot read the profile {}: {e}", path.display())),
    }
}

/// Where to reach the host, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its URL.
    pub host: String,
    /// The token calls carry.
    pub token: Option<String>,
    /// The CA of an https:// host.
    pub tls_ca: Option<PathBuf>,
}

/// The settings `args` name, then the environment's, then `profile`'s.
pub fn resolve(
    args: &HostArg,
    env_token: Option<String>,
    profile: Profile,
) -> anyhow::Result<Target> {
    let host = args
        .host
        .clone()
        .or(profile.host.clone())
        .unwrap_or_else(|| DEFAULT_HOST.to_string());
    // The profile's token and CA go only to the profile's host: never to another one named by
    // --host or CORRAL_HOST.
    let own_host = profile.host.as_deref() == Some(host.as_str());
    let token = match (&args.token, &args.token_file) {
        (Some(token), _) => Some(token.clone()),
        (None, Some(file)) => {
            Some(corral_proto::token::read_secret(file).map_err(anyhow::Error::msg)?)
        }
        (None, None) => env_token
            .filter(|t| !t.is_empty())
            .or(profile.token.filter(|_| own_host)),
    };
    Ok(Target {
        host,
        token,
        tls_ca: args.tls_ca.clone().or(profile.tls_ca.filter(|_| own_host)),
    })
}

/// Arguments of `corral login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The host's URL.
    #[arg(long, value_name = "URL")]
    host: String,
    /// A file holding the token.
    #[arg(long, value_name = "FILE")]
    token_file: PathBuf,
    /// The CA that signs the host's certificate (https:// hosts).
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

/// `corral login`: checks that the host takes the token, then saves the profile.
pub async fn login(args: LoginArgs) -> anyhow::Result<std::process::ExitCode> {
    let token = corral_proto::token::read_secret(&args.token_file).map_err(anyhow::Error::msg)?;
    let role = corral_proto::token::parse(&token)
        .map_err(anyhow::Error::msg)?
        .role;
    // A CA given as a relative path is saved whole, so that the profile works from anywhere.
    let tls_ca = match args.tls_ca {
        Some(ca) => Some(
            std::fs::canonicalize(&ca)
                .with_context(|| format!("cannot find the CA file {}", ca.display()))?,
        ),
        None => None,
    };
    let target = Target {
        host: args.host,
        token: Some(token),
        tls_ca,
    };
    let mut client = super::connect_to(&target).await?;
    client
        .list_partitions(corral_proto::pb::ListPartitionsRequest {})
        .await
        .map_err(super::rpc)?;
    let profile = Profile {
        host: Some(target.host.clone()),
        token: target.token,
        tls_ca: target.tls_ca,
    };
    let path = path().ok_or_else(|| anyhow!("neither XDG_CONFIG_HOME nor HOME is set"))?;
    let text = toml::to_string(&profile).context("writing the profile")?;
    corral_proto::token::write_secret(&path, text.trim_end())
        .with_context(|| format!("cannot write the profile {}", path.display()))?;
    println!(
        "logged in to {} with a {} token; saved in {}",
        target.host,
        role.name(),
        path.display()
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(token: Option<&str>, token_file: Option<PathBuf>) -> HostArg {
        HostArg {
            host: None,
            token: token.map(str::to_string),
            token_file,
            tls_ca: None,
        }
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t");
        std::fs::write(&file, "from-file\n").unwrap();
        let profile = Profile {
            host: Some("https://h:1".into()),
            token: Some("from-profile".into()),
            tls_ca: Some("/ca.pem".into()),
        };
        let env = || Some("from-env".to_string());
        let t = resolve(
            &args(Some("from-flag"), Some(file.clone())),
            env(),
            profile.clone(),
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("from-flag"));
        let t = resolve(&args(None, Some(file)), env(), profile.clone()).unwrap();
        assert_eq!(t.token.as_deref(), Some("from-file"));
        let t = resolve(&args(None, None), env(), profile.clone()).unwrap();
        assert_eq!(t.token.as_deref(), Some("from-env"));
        let t = resolve(&args(None, None), None, profile.clone()).unwrap();
        assert_eq!(t.token.as_deref(), Some("from-profile"));
        assert_eq!(t.host, "https://h:1");
        assert_eq!(t.tls_ca.as_deref(), Some(Path::new("/ca.pem")));
        let t = resolve(&args(None, None), None, Profile::default()).unwrap();
        assert_eq!((t.host.as_str(), t.token), (DEFAULT_HOST, None));
        // Another host named: the profile's token and CA stay home.
        let elsewhere = HostArg {
            host: Some("https://other:1".into()),
            ..args(None, None)
        };
        let t = resolve(&elsewhere, None, profile.clone()).unwrap();
        assert_eq!((t.token, t.tls_ca), (None, None));
        let missing = resolve(
            &args(None, Some(dir.path().join("none"))),
            None,
            Profile::default(),
        );
        assert!(missing.unwrap_err().to_string().contains("none"));
    }
}
