//! Tokens as text, and how clients and agents present them.
//!
//! A token reads `corral_<role>_<accessor>_<secret><check>`: the role's prefix
//! (`corral_admin_`, `corral_tenant_`, `corral_agent_`), so that a leaked token is easy to
//! find in logs and repositories and its kind is plain; a public accessor of 16 hex digits
//! that names it in lists, logs and `corral token revoke`; a secret of 64 hex digits (32
//! random bytes); and 8 hex digits of checksum (the first 4 bytes of the SHA-256 of all
//! before them), so that a mistyped or truncated token is told apart from a wrong one without
//! asking the host. The host keeps only the SHA-256 of the whole text.
//!
//! Calls carry it as `authorization: Bearer <token>` ([`Bearer`]).

use sha2::Digest;

/// What a token may do (the contract's [`crate::pb::Role`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// The client API, as one tenant.
    Tenant,
    /// The agent API.
    Agent,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Tenant, Role::Agent];

    /// Its name: `admin`, `tenant`, `agent`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Tenant => "tenant",
            Role::Agent => "agent",
        }
    }

    /// The role `name` names.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The prefix of its tokens.
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Admin => "corral_admin_",
            Role::Tenant => "corral_tenant_",
            Role::Agent => "corral_agent_",
        }
    }

    /// The contract's number.
    pub fn to_pb(self) -> crate::pb::Role {
        match self {
            Role::Admin => crate::pb::Role::Admin,
            Role::Tenant => crate::pb::Role::Tenant,
            Role::Agent => crate::pb::Role::Agent,
        }
    }

    /// From the contract's number.
    pub fn from_pb(n: i32) -> Option<Role> {
        match crate::pb::Role::try_from(n).ok()? {
            crate::pb::Role::Admin => Some(Role::Admin),
            crate::pb::Role::Tenant => Some(Role::Tenant),
            crate::pb::Role::Agent => Some(Role::Agent),
            crate::pb::Role::Unspecified => None,
        }
    }
}

/// Hex digits of the accessor.
pub const ACCESSOR_HEX: usize = 16;
/// Hex digits of the secret.
pub const SECRET_HEX: usize = 64;
/// Hex digits of the checksum.
pub const CHECK_HEX: usize = 8;

/// A token that is well formed: its role and accessor. The whole text is what the host
/// digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// Its role, by its prefix.
    pub role: Role,
    /// Its public part.
    pub accessor: &'a str,
    /// The whole token.
    pub text: &'a str,
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn checksum(body: &str) -> String {
    let digest = sha2::Sha256::digest(body.as_bytes());
    digest[..CHECK_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token of `role` from its accessor and secret (lowercase hex of [`ACCESSOR_HEX`] and
/// [`SECRET_HEX`] digits), with its checksum.
pub fn compose(role: Role, accessor: &str, secret: &str) -> String {
    let body = format!("{}{accessor}_{secret}", role.prefix());
    let check = checksum(&body);
    body + &check
}

/// `text` as a token, or why it is not one (the message never repeats the secret).
pub fn parse(text: &str) -> Result<Parsed<'_>, String> {
    let text_trimmed = text.trim();
    if text_trimmed.len() != text.len() {
        return Err("malformed token: it has spaces or a newline around it".into());
    }
    let Some(role) = Role::ALL.into_iter().find(|r| text.starts_with(r.prefix())) else {
        return Err(
            "malformed token: a Corral token starts with corral_admin_, corral_tenant_ or \
             corral_agent_"
                .into(),
        );
    };
    let rest = &text[role.prefix().len()..];
    let want = ACCESSOR_HEX + 1 + SECRET_HEX + CHECK_HEX;
    let shape_ok = rest.len() == want
        && rest.as_bytes()[ACCESSOR_HEX] == b'_'
        && is_hex(&rest[..ACCESSOR_HEX])
        && is_hex(&rest[ACCESSOR_HEX + 1..]);
    if rest.len() != want {
        return Err(format!(
            "malformed {} token: after its prefix it has {} characters, not {want} (cut short, \
             or extra characters?)",
            role.name(),
            rest.len()
        ));
    }
    if !shape_ok {
        return Err(format!(
            "malformed {} token: after its prefix it must be 16 lowercase hex digits, '_', and \
             72 more (mistyped?)",
            role.name()
        ));
    }
    let (body, check) = text.split_at(text.len() - CHECK_HEX);
    if checksum(body) != check {
        return Err(format!(
            "malformed {} token {}: its checksum does not match (mistyped?)",
            role.name(),
            &rest[..ACCESSOR_HEX]
        ));
    }
    Ok(Parsed {
        role,
        accessor: &rest[..ACCESSOR_HEX],
        text,
    })
}

/// Writes `text` to `path` as a secret is kept: mode 0600 from the start, through a temporary
/// file that is synced and renamed over it, then the directory synced; so a crash leaves the
/// old file or the new one, whole, and no one else ever reads it.
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    let tmp = dir.join(name);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads a token kept in a file: its first line, without surrounding whitespace. An error names
/// the file.
pub fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token)
}

/// The metadata key a call's token travels under.
pub const AUTHORIZATION: &str = "authorization";

/// Adds `authorization: Bearer <token>` to every call (none without a token). Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl Bearer {
    /// Presents `token`, if any. A token that cannot travel in a header is an error naming the
    /// problem.
    pub fn new(token: Option<&str>) -> Result<Bearer, String> {
        match token {
            None => Ok(Bearer(None)),
            Some(token) => format!("Bearer {token}")
                .parse()
                .map(|v| Bearer(Some(v)))
                .map_err(|_| {
                    "malformed token: it has characters no header can carry (a newline?)".into()
                }),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role) -> String {
        compose(role, "0123456789abcdef", &"a".repeat(SECRET_HEX))
    }

    #[test]
    fn a_composed_token_parses_to_its_role_and_accessor() {
        for role in Role::ALL {
            let text = token(role);
            assert!(text.starts_with(role.prefix()));
            let parsed = parse(&text).unwrap();
            assert_eq!(parsed.role, role);
            assert_eq!(parsed.accessor, "0123456789abcdef");
            assert_eq!(Role::from_name(role.name()), Some(role));
            assert_eq!(Role::from_pb(role.to_pb() as i32), Some(role));
        }
    }

    #[test]
    fn a_mistyped_or_cut_token_is_malformed_and_says_how() {
        let good = token(Role::Tenant);
        // One digit of the secret changed: the checksum catches it.
        let mut typo = good.clone().into_bytes();
        typo[40] = if typo[40] == b'a' { b'b' } else { b'a' };
        let e = parse(std::str::from_utf8(&typo).unwrap()).unwrap_err();
        assert!(e.contains("checksum"), "{e}");
        assert!(
            !e.contains(&"a".repeat(SECRET_HEX)),
            "the secret was repeated: {e}"
        );
        let e = parse(&good[..good.len() - 3]).unwrap_err();
        assert!(e.contains("cut short"), "{e}");
        let e = parse("ghp_0123").unwrap_err();
        assert!(e.contains("starts with"), "{e}");
        let e = parse(&format!("{good}\n")).unwrap_err();
        assert!(e.contains("newline"), "{e}");
        let upper = good
            .to_uppercase()
            .replace("CORRAL_TENANT_", "corral_tenant_");
        assert!(parse(&upper).is_err(), "upper-case hex is not a token");
    }

    #[test]
    fn a_secret_is_written_private_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        write_secret(&path, "corral_admin_x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_secret(&path).unwrap(), "corral_admin_x");
        write_secret(&path, "second").unwrap();
        assert_eq!(read_secret(&path).unwrap(), "second");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_secret(&path).unwrap_err().contains("empty"));
        assert!(read_secret(&dir.path().join("none"))
            .unwrap_err()
            .contains("none"));
    }

    #[test]
    fn a_bearer_adds_the_header_only_with_a_token() {
        use tonic::service::Interceptor;
        let mut none = Bearer::new(None).unwrap();
        let r = none.call(tonic::Request::new(())).unwrap();
        assert!(r.metadata().get(AUTHORIZATION).is_none());
        let text = token(Role::Admin);
        let mut some = Bearer::new(Some(&text)).unwrap();
        let r = some.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get(AUTHORIZATION).unwrap().to_str().unwrap(),
            format!("Bearer {text}")
        );
        assert!(Bearer::new(Some("a\nb")).is_err());
    }
}
