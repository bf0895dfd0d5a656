//! The Postgres connection: `PG_DSN` (URL or libpq's `key=value` form), the course's `DB_*`
//! names, libpq's `PG*` variables and `sslmode`, and what `print-config` shows of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio_postgres::config::Host;

use super::{Origin, Shown, Sources};
use crate::error::{Error, Result};
use crate::settings::{PGPASSWORD, PG_CA_FILE, PG_DSN, PG_PARTS, PG_PASSWORD};
use crate::source::PgSslMode;

/// The connection as pg2es uses it, and how `print-config` shows it.
pub(super) struct Postgres {
    pub config: tokio_postgres::Config,
    /// libpq's `sslmode` (taken out before tokio-postgres parses the DSN).
    pub ssl_mode: PgSslMode,
    /// `PG_CA_FILE`, else `sslrootcert`; `None`: the public web roots.
    pub ca_file: Option<PathBuf>,
    pub shown: Vec<Shown>,
    /// Settings given but overridden, logged as warnings at start.
    pub notices: Vec<String>,
}

/// The connection from [`parse_pg`] and [`pg_tls`], with tokio-postgres's TLS mode for libpq's,
/// and pg2es's application name and a 10 s connect timeout unless the DSN gives its own.
pub(super) fn postgres(src: &Sources) -> Result<Postgres> {
    let (mut pg, dsn_tls, mut origins, notices) = parse_pg(src)?;
    let (ssl_mode, ca_file) = pg_tls(src, dsn_tls)?;
    pg.ssl_mode(match ssl_mode {
        PgSslMode::Disable => tokio_postgres::config::SslMode::Disable,
        PgSslMode::Allow | PgSslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    if pg.get_application_name().is_none() {
        pg.application_name("pg2es");
    }
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(Duration::from_secs(10));
    }
    let roots = ca_file.as_ref().map_or_else(|| "public web roots".to_string(), |ca| format!("CA {}", ca.display()));
    let tls = match ssl_mode {
        PgSslMode::Disable => format!("off (sslmode=disable; add sslmode=verify-full to {PG_DSN} for TLS)"),
        PgSslMode::Allow | PgSslMode::Prefer => format!("when offered, not verified (sslmode={})", ssl_mode.as_str()),
        PgSslMode::Require | PgSslMode::VerifyFull => format!("required, chain and host name verified against {roots} (sslmode={})", ssl_mode.as_str()),
        PgSslMode::VerifyCa => format!("required, chain verified against {roots}, host name not (sslmode=verify-ca)"),
    };
    let dsn_origin = src.origin(PG_DSN.name);
    let ca_origin = match (src.string(PG_CA_FILE.name), &ca_file) {
        (None, Some(_)) => format!("sslrootcert in {PG_DSN}, {dsn_origin}"),
        _ => src.origin(PG_CA_FILE.name),
    };
    let hosts: Vec<String> = pg.get_hosts().iter().map(host_text).collect();
    let mut shown: Vec<Shown> = [
        ("postgres host", hosts.join(",")),
        ("postgres port", pg.get_ports().first().copied().unwrap_or(5432).to_string()),
        ("postgres database", pg.get_dbname().unwrap_or("(user name)").to_string()),
        ("postgres user", pg.get_user().unwrap_or("(none)").to_string()),
        ("postgres password", if pg.get_password().is_some() { "***" } else { "(none)" }.to_string()),
    ]
    .into_iter()
    .map(|(label, value)| Shown { label, value, origin: origins.remove(label).unwrap_or_default() })
    .collect();
    shown.push(Shown { label: "postgres tls", value: tls, origin: format!("sslmode in {PG_DSN}, {dsn_origin}") });
    let ca = ca_file.as_ref().map_or_else(|| format!("({})", PG_CA_FILE.unset), |p| p.display().to_string());
    shown.push(Shown { label: PG_CA_FILE.name, value: ca, origin: ca_origin });
    Ok(Postgres { config: pg, ssl_mode, ca_file, shown, notices })
}

fn host_text(h: &Host) -> String {
    match h {
        Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        Host::Unix(p) => p.display().to_string(),
    }
}

/// The TLS parameters of libpq that tokio-postgres does not parse, taken out of `PG_DSN`.
#[derive(Debug, Default, PartialEq, Eq)]
struct DsnTls {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// A parameter of a DSN: its key and value, decoded (`None` when they cannot be), and its text.
type Param<'a> = (Option<String>, Option<String>, &'a str);

/// Splits `sslmode` and `sslrootcert` off a DSN (URL or key=value form), returning the rest for
/// tokio-postgres, which knows only three of libpq's six modes and no root certificate. A DSN
/// this cannot read is returned whole, for tokio-postgres to refuse.
fn split_dsn_tls(dsn: &str) -> (String, DsnTls) {
    let mut tls = DsnTls::default();
    // What is not TLS is kept as it was written.
    let (head, separator, pairs): (&str, &str, Vec<Param>) = match (is_url(dsn), dsn.split_once('?')) {
        (true, Some((head, query))) => {
            let pairs = query.split('&').map(|text| {
                let (key, value) = text.split_once('=').unwrap_or((text, ""));
                (percent_decode(key), percent_decode(value), text)
            });
            (head, "&", pairs.collect())
        }
        (false, _) => match keyword_pairs(dsn) {
            Some(pairs) => ("", " ", pairs.into_iter().map(|(key, value, text)| (Some(key.to_string()), Some(value), text)).collect()),
            None => return (dsn.to_string(), tls),
        },
        (true, None) => return (dsn.to_string(), tls),
    };
    let mut kept = Vec::new();
    for (key, value, text) in pairs {
        match (key.as_deref(), value) {
            (Some("sslmode"), Some(v)) => tls.sslmode = Some(v),
            (Some("sslrootcert"), Some(v)) => tls.sslrootcert = Some(v),
            _ => kept.push(text),
        }
    }
    let rest = match (head, kept.is_empty()) {
        ("", _) => kept.join(separator),
        (head, true) => head.to_string(),
        (head, false) => format!("{head}?{}", kept.join(separator)),
    };
    (rest, tls)
}

/// `key = value` pairs of a libpq keyword DSN: (key, unquoted value, the pair's text). `None`
/// when it does not read as one.
fn keyword_pairs(dsn: &str) -> Option<Vec<(&str, String, &str)>> {
    let mut pairs = Vec::new();
    let mut chars = dsn.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else { return Some(pairs) };
        while chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=').is_some() {}
        let key_end = chars.peek().map_or(dsn.len(), |(i, _)| *i);
        skip_space(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        loop {
            match chars.peek().map(|(_, c)| *c) {
                None if quoted => return None,
                None => break,
                Some('\'') if quoted => {
                    chars.next();
                    break;
                }
                Some(c) if c.is_whitespace() && !quoted => break,
                Some('\\') => {
                    chars.next();
                    value.push(chars.next()?.1);
                }
                Some(c) => {
                    chars.next();
                    value.push(c);
                }
            }
        }
        let end = chars.peek().map_or(dsn.len(), |(i, _)| *i);
        pairs.push((&dsn[start..key_end], value, &dsn[start..end]));
    }
}

/// `%XX` decoding as in a postgres:// URL (`+` stays `+`, as libpq reads it); `None` for text
/// that is not UTF-8 once decoded.
fn percent_decode(s: &str) -> Option<String> {
    percent_decode_str(s).decode_utf8().ok().map(|text| text.into_owned())
}

/// The Postgres connection, the DSN's TLS settings, where each part came from, and the settings
/// given but overridden (for the log).
type PgParts = (tokio_postgres::Config, DsnTls, BTreeMap<&'static str, String>, Vec<String>);

/// Builds the Postgres connection from `PG_DSN`, `DB_*`, `PG*` and `PG_PASSWORD`.
///
/// Per part, the first set of: an explicit part of `PG_DSN` (set in the environment or the
/// file), `DB_*`, `PG*`, the built-in default DSN. A `DB_*` value that an explicit `PG_DSN`
/// overrides with another is never silently dropped: it is named in the origins and logged as a
/// warning at start (a Django `.env` exported beside `PG_DSN` would otherwise point pg2es at
/// another database). Password: `PG_PASSWORD` (or `DB_PASSWORD`,
/// `PG_PASSWORD_FILE`), then the password in `PG_DSN`, then `PGPASSWORD`, as libpq lets a
/// connection string beat PGPASSWORD.
fn parse_pg(src: &Sources) -> Result<PgParts> {
    let full_dsn = src.required(&PG_DSN)?;
    let (dsn, tls) = split_dsn_tls(&full_dsn);
    let mut pg: tokio_postgres::Config = dsn.parse().map_err(|e: tokio_postgres::Error| {
        // The parser's message may quote the DSN, password included: only the two that name an
        // option (never a value) are passed on; otherwise say what is expected.
        let why =
            std::error::Error::source(&e).map(|c| c.to_string()).filter(|m| m.starts_with("unknown option `") || m.starts_with("invalid value for option `"));
        Error::Config(format!(
            "{}: not a valid connection string{}; expected postgres://user@host:port/dbname or 'host=... dbname=...'",
            src.describe(PG_DSN.name),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        ))
    })?;
    let dsn_is_default = matches!(src.get(PG_DSN.name).map(|r| &r.origin), Some(Origin::Default));
    let dsn_sets_port = if is_url(&dsn) { url_names_a_port(&dsn) } else { !pg.get_ports().is_empty() };
    let dsn_sets = [!pg.get_hosts().is_empty(), dsn_sets_port, pg.get_user().is_some(), pg.get_dbname().is_some()];
    // The variable that supplies each part, when it is not the DSN's own.
    let dsn_parts: [Option<String>; 4] = [
        pg.get_hosts().first().map(host_text),
        pg.get_ports().first().map(u16::to_string),
        pg.get_user().map(str::to_string),
        pg.get_dbname().map(str::to_string),
    ];
    let mut overridden = Vec::new();
    let chosen: Vec<Option<(&'static str, String)>> = PG_PARTS
        .iter()
        .zip(dsn_sets)
        .zip(&dsn_parts)
        .enumerate()
        .map(|(i, (((course, libpq), dsn_set), dsn_part))| {
            let explicit = dsn_set && !dsn_is_default;
            let course_value = src.string(course);
            if let (true, Some(v), Some(part)) = (explicit, &course_value, dsn_part) {
                if v != part {
                    overridden.push((i, *course, v.clone(), part.clone()));
                }
            }
            let course = course_value.filter(|_| !explicit).map(|v| (*course, v));
            let libpq = src.string(libpq).filter(|_| !explicit).map(|v| (*libpq, v));
            course.or(libpq)
        })
        .collect();
    let hosts = chosen[0].as_ref().map(|(_, v)| v.split(',').map(|h| h.trim().to_string()).collect::<Vec<_>>());
    let ports = match &chosen[1] {
        Some((var, v)) => Some(
            v.split(',')
                .map(|p| p.trim().parse::<u16>().ok().filter(|p| *p > 0))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| src.bad(var, "a port number from 1 to 65535"))?,
        ),
        None => None,
    };
    if hosts.is_some() || ports.is_some() {
        pg = replace_hosts_ports(&pg, hosts.as_deref(), ports.as_deref());
    }
    if let Some((_, user)) = &chosen[2] {
        pg.user(user);
    }
    if let Some((_, dbname)) = &chosen[3] {
        pg.dbname(dbname);
    }
    let dsn_password = pg.get_password().is_some();
    // The course's DB_PASSWORD is a part as DB_HOST is: a PG_DSN you set that writes a password
    // keeps it (a Django .env exported beside PG_DSN); PG_PASSWORD itself overrides it.
    let course_password = matches!(src.get(PG_PASSWORD.name).map(|r| &r.origin), Some(Origin::EnvAlias(var)) if PG_PASSWORD.aliases.contains(&var.as_str()));
    let password_ignored = course_password && dsn_password && !dsn_is_default;
    match src.string(PG_PASSWORD.name) {
        Some(p) if !password_ignored => {
            pg.password(p);
        }
        _ if pg.get_password().is_none() => {
            if let Some(p) = src.string(PGPASSWORD) {
                pg.password(p);
            }
        }
        _ => {}
    }
    if pg.get_hosts().is_empty() && pg.get_hostaddrs().is_empty() {
        pg.host("127.0.0.1");
    }

    let dsn_origin = format!("{PG_DSN}, {}", src.origin(PG_DSN.name));
    let mut origins = BTreeMap::new();
    for (i, ((label, dsn_set), var)) in
        ["postgres host", "postgres port", "postgres user", "postgres database"].into_iter().zip(dsn_sets).zip(&chosen).enumerate()
    {
        let mut origin = match var {
            Some((var, _)) => format!("environment, {var}"),
            None if dsn_set || dsn_is_default => dsn_origin.clone(),
            None => "built in".to_string(),
        };
        if let Some((_, course, value, _)) = overridden.iter().find(|(at, ..)| *at == i) {
            origin.push_str(&format!("; {course}={value} ignored"));
        }
        origins.insert(label, origin);
    }
    let mut notices = Vec::new();
    for (_, course, value, part) in &overridden {
        notices.push(format!("{course}={value} is ignored: {PG_DSN} gives {part}; unset {course} or change {PG_DSN}"));
    }
    let course = PG_PASSWORD.aliases.first().copied().unwrap_or_default();
    if password_ignored && src.string(PG_PASSWORD.name).as_deref().map(str::as_bytes) != pg.get_password() {
        notices.push(format!("{course} is ignored: {PG_DSN} gives a password of its own; unset {course}, or set {PG_PASSWORD}, which overrides it"));
    }
    let password_origin = if src.string(PG_PASSWORD.name).is_some() && !password_ignored {
        format!("{PG_PASSWORD}, {}", src.origin(PG_PASSWORD.name))
    } else if dsn_password && password_ignored {
        format!("{dsn_origin}; {course} ignored")
    } else if dsn_password {
        dsn_origin
    } else if pg.get_password().is_some() {
        "environment, PGPASSWORD".to_string()
    } else {
        "unset".to_string()
    };
    origins.insert("postgres password", password_origin);
    Ok((pg, tls, origins, notices))
}

fn is_url(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")
}

/// Whether a URL DSN gives a port: tokio-postgres's parser puts 5432 in for a host without one,
/// so the parsed config cannot tell.
fn url_names_a_port(dsn: &str) -> bool {
    let Some(rest) = dsn.strip_prefix("postgres://").or_else(|| dsn.strip_prefix("postgresql://")) else { return false };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, hosts)| hosts);
    hosts.split(',').any(|h| {
        // [::1]:5432: the port follows the bracket.
        let after_host = if h.starts_with('[') { h.split_once(']').map_or("", |(_, rest)| rest) } else { h };
        after_host.contains(':')
    }) || rest.split_once('?').is_some_and(|(_, query)| query.split('&').any(|pair| pair.starts_with("port=")))
}

/// tokio_postgres::Config only appends hosts and ports; these replace them, so start a fresh
/// config and copy over everything else the DSN set.
fn replace_hosts_ports(old: &tokio_postgres::Config, hosts: Option<&[String]>, ports: Option<&[u16]>) -> tokio_postgres::Config {
    let mut pg = tokio_postgres::Config::new();
    match hosts {
        Some(hosts) => {
            for h in hosts {
                pg.host(h);
            }
        }
        None => {
            for h in old.get_hosts() {
                match h {
                    Host::Tcp(h) => pg.host(h),
                    #[cfg(unix)]
                    Host::Unix(p) => pg.host_path(p),
                };
            }
            // hostaddr pairs with the DSN's own hosts; new hosts are resolved by name.
            for a in old.get_hostaddrs() {
                pg.hostaddr(*a);
            }
        }
    }
    for p in ports.unwrap_or(old.get_ports()) {
        pg.port(*p);
    }
    if let Some(u) = old.get_user() {
        pg.user(u);
    }
    if let Some(d) = old.get_dbname() {
        pg.dbname(d);
    }
    if let Some(p) = old.get_password() {
        pg.password(p);
    }
    if let Some(a) = old.get_application_name() {
        pg.application_name(a);
    }
    if let Some(o) = old.get_options() {
        pg.options(o);
    }
    if let Some(t) = old.get_connect_timeout() {
        pg.connect_timeout(*t);
    }
    if let Some(t) = old.get_tcp_user_timeout() {
        pg.tcp_user_timeout(*t);
    }
    pg.keepalives(old.get_keepalives()).keepalives_idle(old.get_keepalives_idle());
    if let Some(i) = old.get_keepalives_interval() {
        pg.keepalives_interval(i);
    }
    if let Some(r) = old.get_keepalives_retries() {
        pg.keepalives_retries(r);
    }
    pg.ssl_mode(old.get_ssl_mode())
        .ssl_negotiation(old.get_ssl_negotiation())
        .target_session_attrs(old.get_target_session_attrs())
        .channel_binding(old.get_channel_binding())
        .load_balance_hosts(old.get_load_balance_hosts());
    pg
}

/// The sslmode and the CA: PG_CA_FILE wins over sslrootcert, as PG_PASSWORD wins over the DSN's
/// password. Refuses a CA that the mode would not use, and verify-ca without a CA of its own
/// (against the public roots, any web site's certificate would pass).
fn pg_tls(src: &Sources, dsn: DsnTls) -> Result<(PgSslMode, Option<PathBuf>)> {
    let dsn_name = src.describe(PG_DSN.name);
    let mode = match dsn.sslmode.as_deref() {
        None => PgSslMode::Disable,
        Some(value) => PgSslMode::ALL
            .iter()
            .find(|(name, _)| *name == value)
            .map(|(_, m)| *m)
            .ok_or_else(|| Error::Config(format!("{dsn_name}: sslmode='{value}': expected disable, allow, prefer, require, verify-ca or verify-full")))?,
    };
    let (ca, ca_name) = match (src.string(PG_CA_FILE.name), dsn.sslrootcert) {
        (Some(file), _) => (Some(PathBuf::from(file)), PG_CA_FILE.name.to_string()),
        // libpq's sslrootcert=system: the system's roots; here the public web roots.
        (None, Some(root)) if root == "system" => (None, format!("sslrootcert in {dsn_name}")),
        (None, Some(root)) => (Some(PathBuf::from(root)), format!("sslrootcert in {dsn_name}")),
        (None, None) => (None, String::new()),
    };
    if ca.is_some() && !mode.verifies() {
        return Err(Error::Config(format!(
            "{ca_name} is set but sslmode={} does not verify the server: expected sslmode=verify-full (or verify-ca, require) in {PG_DSN}",
            mode.as_str()
        )));
    }
    if mode == PgSslMode::VerifyCa && ca.is_none() {
        return Err(Error::Config(format!(
            "{dsn_name}: sslmode=verify-ca expected the CA that signs the server's certificate in {PG_CA_FILE} or sslrootcert (against the public roots any web site's certificate would pass); or use sslmode=verify-full"
        )));
    }
    Ok((mode, ca))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::tests::{config, err};
    use crate::config::Config;
    use crate::source::PgSslMode;

    #[test]
    fn course_variables_override_the_dsn() {
        let c = config(&[
            ("DB_HOST", "pg.internal"),
            ("DB_PORT", "6432"),
            ("DB_NAME", "catalog"),
            ("DB_USER", "etl"),
            ("DB_PASSWORD", "pw"),
            ("ES_HOST", "http://es:9200"),
        ])
        .unwrap();
        assert_eq!(c.postgres.pg.get_dbname(), Some("catalog"));
        assert_eq!(c.postgres.pg.get_user(), Some("etl"));
        assert_eq!(c.postgres.pg.get_ports(), &[6432]);
        assert_eq!(c.postgres.pg.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.sink.urls[0].as_str(), "http://es:9200/");
        assert!(matches!(&c.postgres.pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "pg.internal"));
    }

    fn host(c: &Config) -> String {
        match &c.postgres.pg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        }
    }

    #[test]
    fn libpq_variables_replace_the_builtin_dsn() {
        let c = config(&[("PGHOST", "db.internal"), ("PGPORT", "6543"), ("PGUSER", "etl"), ("PGDATABASE", "catalog"), ("PGPASSWORD", "pw")]).unwrap();
        assert_eq!(host(&c), "db.internal");
        assert_eq!(c.postgres.pg.get_hosts().len(), 1);
        assert_eq!(c.postgres.pg.get_ports(), &[6543]);
        assert_eq!(c.postgres.pg.get_user(), Some("etl"));
        assert_eq!(c.postgres.pg.get_dbname(), Some("catalog"));
        assert_eq!(c.postgres.pg.get_password(), Some(&b"pw"[..]));
        assert!(err(&[("PGPORT", "x")]).contains("PGPORT"));
    }

    #[test]
    fn an_explicit_dsn_part_beats_libpq_variables() {
        let libpq = [("PGHOST", "other"), ("PGPORT", "6543"), ("PGUSER", "etl"), ("PGDATABASE", "x"), ("PGPASSWORD", "env-pw")];
        let with = |dsn: &'static str| {
            let mut env = vec![("PG_DSN", dsn)];
            env.extend(libpq);
            config(&env).unwrap()
        };
        // The DSN names host, user and database; port and password come from PGPORT, PGPASSWORD.
        let c = with("postgres://app@pg1/movies?application_name=mine&connect_timeout=3");
        assert_eq!(
            (host(&c).as_str(), c.postgres.pg.get_ports(), c.postgres.pg.get_user(), c.postgres.pg.get_dbname()),
            ("pg1", &[6543][..], Some("app"), Some("movies"))
        );
        assert_eq!(c.postgres.pg.get_password(), Some(&b"env-pw"[..]));
        // Replacing the port kept the DSN's other options.
        assert_eq!(c.postgres.pg.get_application_name(), Some("mine"));
        assert_eq!(c.postgres.pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
        // key=value form without a host: PGHOST fills it.
        let c = with("dbname=movies user=app");
        assert_eq!((host(&c).as_str(), c.postgres.pg.get_dbname()), ("other", Some("movies")));
        // libpq's rule: a password in the connection string beats PGPASSWORD.
        assert_eq!(with("postgres://app:dsn-pw@pg1/movies").postgres.pg.get_password(), Some(&b"dsn-pw"[..]));
    }

    #[test]
    fn pg_password_beats_the_dsn_and_an_explicit_dsn_beats_course_names() {
        let c = config(&[
            ("PG_DSN", "postgres://app:dsn-pw@pg1:5433/movies"),
            ("PG_PASSWORD", "explicit"),
            ("PGPASSWORD", "env-pw"),
            ("DB_HOST", "a"),
            ("DB_NAME", "django"),
            ("DB_USER", "app"),
            ("PGHOST", "b"),
        ])
        .unwrap();
        assert_eq!(c.postgres.pg.get_password(), Some(&b"explicit"[..]));
        assert_eq!((host(&c).as_str(), c.postgres.pg.get_ports(), c.postgres.pg.get_dbname()), ("pg1", &[5433][..], Some("movies")));
        // Never silently: each one that differs is named, with the one that won.
        assert_eq!(
            c.notices,
            [
                "DB_HOST=a is ignored: PG_DSN gives pg1; unset DB_HOST or change PG_DSN",
                "DB_NAME=django is ignored: PG_DSN gives movies; unset DB_NAME or change PG_DSN"
            ]
        );
        let shown = c.render();
        assert!(shown.contains("DB_NAME=django ignored") && !shown.contains("DB_USER=app ignored"), "{shown}");
        // Without an explicit PG_DSN, the course names fill in the parts.
        let c = config(&[("DB_HOST", "a"), ("DB_NAME", "django"), ("PGHOST", "b")]).unwrap();
        assert_eq!((host(&c).as_str(), c.postgres.pg.get_dbname()), ("a", Some("django")));
        assert!(c.notices.is_empty());
    }

    /// A connection string pg2es cannot read names the option at fault, never a value.
    #[test]
    fn a_bad_dsn_names_the_option_not_the_password() {
        let e = err(&[("PG_DSN", "host=x bogus=1 password=sekret")]);
        assert!(e.contains("unknown option `bogus`") && !e.contains("sekret"), "{e}");
        let e = err(&[("PG_DSN", "postgres://u:sekret@h:99999/db")]);
        assert!(e.contains("invalid value for option `port`") && !e.contains("sekret"), "{e}");
        let e = err(&[("PG_DSN", "host='x password=sekret")]);
        assert!(e.contains("not a valid connection string;") && !e.contains("sekret"), "{e}");
    }

    /// DB_PASSWORD is a part as DB_HOST is: a password written in a PG_DSN you set wins, with a
    /// warning; it fills one the DSN leaves out; PG_PASSWORD and its file override the DSN's.
    #[test]
    fn an_explicit_dsn_password_beats_db_password() {
        let c = config(&[("PG_DSN", "postgres://app:dsn-pw@pg1/movies"), ("DB_PASSWORD", "django-pw")]).unwrap();
        assert_eq!(c.postgres.pg.get_password(), Some(&b"dsn-pw"[..]));
        assert_eq!(c.notices, ["DB_PASSWORD is ignored: PG_DSN gives a password of its own; unset DB_PASSWORD, or set PG_PASSWORD, which overrides it"]);
        assert!(c.render().contains("DB_PASSWORD ignored"), "{}", c.render());
        let c = config(&[("PG_DSN", "postgres://app@pg1/movies"), ("DB_PASSWORD", "django-pw")]).unwrap();
        assert_eq!(c.postgres.pg.get_password(), Some(&b"django-pw"[..]));
        assert!(c.notices.is_empty());
        let c = config(&[("DB_PASSWORD", "django-pw")]).unwrap();
        assert_eq!(c.postgres.pg.get_password(), Some(&b"django-pw"[..]));
        let c = config(&[("PG_DSN", "postgres://app:dsn-pw@pg1/movies"), ("PG_PASSWORD", "explicit"), ("DB_PASSWORD", "django-pw")]).unwrap();
        assert_eq!(c.postgres.pg.get_password(), Some(&b"explicit"[..]));
    }

    #[test]
    fn libpq_sslmodes_and_sslrootcert_are_taken_from_the_dsn() {
        use tokio_postgres::config::SslMode;
        for (mode, expected, tokio) in [
            ("disable", PgSslMode::Disable, SslMode::Disable),
            ("allow", PgSslMode::Allow, SslMode::Prefer),
            ("prefer", PgSslMode::Prefer, SslMode::Prefer),
            ("require", PgSslMode::Require, SslMode::Require),
            ("verify-full", PgSslMode::VerifyFull, SslMode::Require),
        ] {
            let c = config(&[("PG_DSN", &format!("postgres://app@db/movies?sslmode={mode}&application_name=x"))]).unwrap();
            assert_eq!((c.postgres.ssl_mode, c.postgres.pg.get_ssl_mode(), c.postgres.pg.get_application_name()), (expected, tokio, Some("x")), "{mode}");
            let c = config(&[("PG_DSN", &format!("host=db dbname=movies sslmode = {mode} user=app"))]).unwrap();
            assert_eq!((c.postgres.ssl_mode, c.postgres.pg.get_user()), (expected, Some("app")), "{mode}");
        }
        // Without sslmode pg2es connects in plain text, as it always has.
        assert_eq!(config(&[]).unwrap().postgres.ssl_mode, PgSslMode::Disable);

        let c = config(&[("PG_DSN", "postgres://app:pw@db/movies?sslrootcert=%2Fetc%2Fpg%20ca.pem&sslmode=verify-ca")]).unwrap();
        assert_eq!((c.postgres.ssl_mode, c.postgres.ca_file.as_deref()), (PgSslMode::VerifyCa, Some(Path::new("/etc/pg ca.pem"))));
        let c = config(&[("PG_DSN", r"dbname=movies sslmode=verify-full sslrootcert='/etc/it\'s ca.pem' host=db")]).unwrap();
        assert_eq!((c.postgres.ssl_mode, c.postgres.ca_file.as_deref()), (PgSslMode::VerifyFull, Some(Path::new("/etc/it's ca.pem"))));
        assert!(matches!(&c.postgres.pg.get_hosts()[0], tokio_postgres::config::Host::Tcp(h) if h == "db"));
        // sslrootcert=system: the public roots.
        assert_eq!(config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-full&sslrootcert=system")]).unwrap().postgres.ca_file, None);
        // PG_CA_FILE wins over sslrootcert.
        let c = config(&[("PG_DSN", "postgres://db/movies?sslmode=require&sslrootcert=/dsn.pem"), ("PG_CA_FILE", "/env.pem")]).unwrap();
        assert_eq!(c.postgres.ca_file.as_deref(), Some(Path::new("/env.pem")));
    }

    #[test]
    fn tls_settings_that_cannot_work_are_refused() {
        let e = err(&[("PG_DSN", "postgres://app:hunter2@db/movies?sslmode=verify-everything")]);
        assert!(e.contains("PG_DSN") && e.contains("verify-full") && !e.contains("hunter2"), "{e}");
        // A CA with a mode that does not verify would give a false sense of safety.
        for dsn in ["postgres://db/movies?sslmode=prefer", "postgres://db/movies"] {
            let e = err(&[("PG_DSN", dsn), ("PG_CA_FILE", "/ca.pem")]);
            assert!(e.contains("PG_CA_FILE") && e.contains("verify-full"), "{e}");
        }
        let e = err(&[("PG_DSN", "postgres://db/movies?sslmode=allow&sslrootcert=/ca.pem")]);
        assert!(e.contains("sslrootcert") && e.contains("sslmode=allow"), "{e}");
        // verify-ca against the public roots would accept any web site's certificate.
        let e = err(&[("PG_DSN", "postgres://db/movies?sslmode=verify-ca")]);
        assert!(e.contains("verify-ca") && e.contains("PG_CA_FILE"), "{e}");
        assert!(config(&[("PG_DSN", "postgres://db/movies?sslmode=verify-ca"), ("PG_CA_FILE", "/ca.pem")]).is_ok());
    }
}
