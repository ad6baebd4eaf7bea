//! The commented file `estuary serve` writes on first start (and `estuary config init`), and
//! the key reference of `docs/configuration.md`, generated from [`KEYS`] (a test checks that
//! the file format, the template and the document agree).

use std::path::Path;

use super::file::{ConfigFile, LabelConfig};

impl ConfigFile {
    /// The file's text, with a comment on every setting.
    pub fn to_commented_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter().map(|x| s(x)).collect::<Vec<_>>().join(", ")
            )
        };
        let mut o = String::new();
        let mut line = |text: &str| {
            o.push_str(text);
            o.push('\n');
        };
        line("# Estuary EST server configuration.");
        line("# Written by `estuary serve` on first start with every effective setting.");
        line("# Edit, then restart or send SIGHUP (users, labels, profiles, rate limits, bootstrap CAs");
        line(
            "# reload on SIGHUP; listen addresses, the CA and the TLS certificate need a restart).",
        );
        line("# Command-line flags override these values. Reference: docs/configuration.md");
        line("");
        line("# Test mode (the Azure IoT Edge tutorial's settings). Never use in production.");
        line(&format!("dev = {}", self.dev));
        line("");
        line("# TLS listen addresses (ADDRESS:PORT). An IPv6 address that cannot be bound is skipped with a warning.");
        line(&format!("listen = {}", list(&self.listen)));
        line("");
        line("# Lifetime of issued certificates unless the profile says otherwise: 30s, 60m, 12h, 1d, 90d ...");
        line(&format!("validity = {}", s(&self.validity)));
        line("");
        line("# CA key type, used only when the CA is created: p256, p384, rsa2048, rsa3072, rsa4096, ed25519.");
        line(&format!("ca_key = {}", s(&self.ca_key)));
        line("");
        line("# The CA key in a PKCS#11 token (HSM) instead of ca-key.pem, as an RFC 7512 URI; set by");
        line("# `estuary ca init --key-uri` and `estuary ca import --key-uri`. See docs/hsm.md. Example:");
        line("# ca_key_uri = \"pkcs11:token=estuary;object=estuary-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/estuary/hsm-pin\"");
        if let Some(uri) = &self.ca_key_uri {
            line(&format!("ca_key_uri = {}", s(&uri.0)));
        }
        line("");
        line("# Names and IPs in the TLS server certificate beyond localhost, 127.0.0.1 and ::1.");
        line("# Adding one re-issues the server certificate at the next start.");
        line(&format!("server_sans = {}", list(&self.server_sans)));
        line("");
        line("# PEM files of bootstrap CAs (e.g. a manufacturer's) whose certificates may authenticate");
        line("# simpleenroll (RFC 7030 §3.3.2). Each is named by its file stem (mfg.pem -> \"mfg\").");
        let paths: Vec<String> = self
            .bootstrap_ca
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        line(&format!("bootstrap_ca = {}", list(&paths)));
        line("");
        line("# A CRL per bootstrap CA (by name): a file (DER or PEM) or an http:// URL. Certificates it");
        line("# lists are refused; while it is past its nextUpdate, that CA's certificates are refused.");
        line("# Example: bootstrap_crl = { mfg = \"mfg.crl\" }");
        let crls: Vec<String> = self
            .bootstrap_crl
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_key(k), s(v)))
            .collect();
        line(&format!("bootstrap_crl = {{ {} }}", crls.join(", ")));
        line("");
        line("# Object identifiers returned by /csrattrs (RFC 7030 §4.5); empty = 204 No Content.");
        line(&format!("csrattrs = {}", list(&self.csrattrs)));
        line("");
        line("# Retry-After sent while a request waits for manual approval (RFC 7030 §4.2.3).");
        line(&format!(
            "approval_retry_after = {}",
            s(&self.approval_retry_after)
        ));
        line("");
        line("# Plain-HTTP admin listener: /metrics (Prometheus), /healthz, /readyz. Empty = off.");
        line("# Keep it on loopback or a management network.");
        line(&format!("admin_listen = {}", s(&self.admin_listen)));
        line("");
        line("# Requests without a label (/.well-known/est/simpleenroll), and labels");
        line("# (/.well-known/est/<label>/simpleenroll). Each has:");
        line("#   profile      - a profile name (built in: device, edge-ca), or auto: edge-ca when the");
        line(
            "#                  CSR asks for CA:TRUE, device otherwise (the tutorial's behaviour)",
        );
        line("#   auth         - who may use it: basic, basic:NAME, client-cert (any certificate this CA");
        line("#                  issued), client-cert:label:NAME, client-cert:profile:NAME (issued under");
        line("#                  that label - default = unlabeled - or profile), bootstrap, bootstrap:NAME.");
        line("#                  Absent = basic and client-cert (bootstrap certificates only where a");
        line("#                  label names them). A label whose profile issues CA certificates must name");
        line("#                  them (basic:NAME, client-cert:label:NAME, ...) outside --dev.");
        line("#   subject      - for requests authenticated by a certificate: same-as-client-cert (the");
        line("#                  default outside --dev), any, or a pattern for the CN in which {client_cn}");
        line("#                  is the client certificate's CN (e.g. \"aziot-edge CA {client_cn}\")");
        line("#   approval     - auto, or manual: 202 + Retry-After until `estuary requests approve ID`,");
        line("#                  or manual-first: manual for a first enrollment, renewals at once");
        line("#   serverkeygen - offer /serverkeygen (the server makes the key)");
        line("#   upstream_label - with [upstream] (RA mode): the parent's label this label forwards to;");
        line("#                  absent = the same name (the default label: the parent's default label);");
        line("#                  \"default\" = the parent's unlabeled path");
        line("# Auth may also name a registration authority forwarding for its clients: ra:NAME (see");
        line("# [registration_authorities] below); --dev adds ra (any RA of this CA) to [default] and");
        line("# the labels est-ra and est-server (auth basic, client-cert, ra) so that an RA can provision itself.");
        let label = |o: &mut String, header: &str, l: &LabelConfig| {
            o.push_str(&format!("[{header}]\nprofile = {}\n", s(&l.profile)));
            if let Some(auth) = &l.auth {
                o.push_str(&format!("auth = {}\n", list(auth)));
            }
            if let Some(subject) = &l.subject {
                o.push_str(&format!("subject = {}\n", s(subject)));
            }
            if let Some(upstream) = &l.upstream_label {
                o.push_str(&format!("upstream_label = {}\n", s(upstream)));
            }
            o.push_str(&format!(
                "approval = {}\nserverkeygen = {}\n\n",
                s(&l.approval),
                l.serverkeygen
            ));
        };
        label(&mut o, "default", &self.default);
        for (name, l) in &self.labels {
            label(&mut o, &format!("labels.{}", toml_key(name)), l);
        }
        o.push_str("# Profiles: what certificates contain. Built in: device (CA:FALSE, digitalSignature,\n");
        o.push_str(
            "# clientAuth), edge-ca (CA:TRUE pathlen:0, keyCertSign+cRLSign+digitalSignature),\n",
        );
        o.push_str("# est-ra (an RA's certificate: clientAuth + cmcRA) and tls-server (serverAuth + clientAuth,\n");
        o.push_str("# dns and ip SANs).\n");
        o.push_str("# Keys: validity, key_types, key_usage, extended_key_usage, ca, pathlen, cn_pattern,\n");
        o.push_str(
            "# cn_equals_username, san_types, serverkeygen_key_type (see docs/configuration.md).\n",
        );
        for (name, p) in &self.profiles {
            let body = toml::to_string(p).unwrap_or_default();
            o.push_str(&format!("[profiles.{}]\n{}\n", toml_key(name), body));
        }
        o.push('\n');
        o.push_str(
            "# Certificate revocation list, signed by the CA, served at GET /crl (DER).\n[crl]\n",
        );
        o.push_str("# nextUpdate - thisUpdate; the CRL is re-signed on every revocation and when half of this has passed.\n");
        o.push_str(&format!("validity = {}\n", s(&self.crl.validity)));
        o.push_str(
            "# URL written into issued certificates as CRL distribution point; empty = none.\n",
        );
        o.push_str(&format!("url = {}\n", s(&self.crl.url)));
        o.push_str("# Plain-HTTP listener for /crl (relying parties fetch CRLs over http); empty = none.\n");
        o.push_str(&format!("listen = {}\n\n", s(&self.crl.listen)));
        o.push_str("# Rate limits per minute (token buckets); 0 = off. Over the limit: 429 + Retry-After.\n[rate_limits]\n");
        let r = &self.rate_limits;
        o.push_str("# Requests from one source address.\n");
        o.push_str(&format!(
            "per_address_per_minute = {}\n",
            r.per_address_per_minute
        ));
        o.push_str("# Enrollments by one authenticated identity.\n");
        o.push_str(&format!(
            "per_identity_per_minute = {}\n",
            r.per_identity_per_minute
        ));
        o.push_str("# What a failed authentication costs against the address's budget.\n");
        o.push_str(&format!("failed_auth_cost = {}\n\n", r.failed_auth_cost));
        o.push_str("# The audit trail (issuances and refusals, in the database).\n[audit]\n");
        o.push_str("# Events older than this are deleted, hourly (and by `estuary audit prune`); \"\" = keep for ever.\n");
        o.push_str(&format!("retention = {}\n\n", s(&self.audit.retention)));
        o.push_str("# Connection limits and timeouts.\n[limits]\n");
        let l = &self.limits;
        o.push_str("# Most concurrent connections; more are closed at once.\n");
        o.push_str(&format!("max_connections = {}\n", l.max_connections));
        o.push_str("# Most concurrent connections from one address (an IPv6 /64): one host cannot take them all.\n");
        o.push_str(&format!(
            "max_connections_per_address = {}\n",
            l.max_connections_per_address
        ));
        o.push_str("# Largest request body in bytes (413 above).\n");
        o.push_str(&format!("max_body_bytes = {}\n", l.max_body_bytes));
        o.push_str("# Time allowed for the TLS handshake.\n");
        o.push_str(&format!(
            "handshake_timeout = {}\n",
            s(&l.handshake_timeout)
        ));
        o.push_str("# Time allowed to send request headers; also the idle time between keep-alive requests.\n");
        o.push_str(&format!("header_timeout = {}\n", s(&l.header_timeout)));
        o.push_str("# Time allowed to send a request body.\n");
        o.push_str(&format!("body_timeout = {}\n", s(&l.body_timeout)));
        o.push_str("# Longest life of one connection: the next answer closes it (a client that stops reading is cut a header_timeout later).\n");
        o.push_str(&format!(
            "max_connection_age = {}\n",
            s(&l.max_connection_age)
        ));
        o.push_str("# Load balancers (IP addresses) that begin each connection with a PROXY protocol header\n");
        o.push_str(
            "# (HAProxy send-proxy-v2) naming the device's address; their connections must.\n",
        );
        o.push_str(&format!(
            "proxy_protocol_from = [{}]\n\n",
            l.proxy_protocol_from
                .iter()
                .map(|a| s(a))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        o.push_str(&self.database_toml());
        o.push_str(&self.upstream_toml());
        o.push_str(&self.registration_authorities_toml());
        o.push_str("# HTTP Basic users (RFC 7617): [[users]] tables with name and password_hash (argon2).\n");
        o.push_str(
            "# Add one with `estuary user add NAME`, remove one with `estuary user remove NAME`.\n",
        );
        for u in &self.users {
            o.push_str(&format!(
                "[[users]]\nname = {}\npassword_hash = {}\n\n",
                s(&u.name),
                s(&u.password_hash)
            ));
        }
        o
    }
}

impl ConfigFile {
    fn database_toml(&self) -> String {
        let mut o = String::new();
        o.push_str("# The certificate store: SQLite in DATA_DIR/estuary.db unless url names another. Several\n");
        o.push_str("# nodes share one PostgreSQL database (docs/cluster.md); --database URL and\n");
        o.push_str("# ESTUARY_DATABASE override this for one run. Keep this file private: the URL holds a password.\n");
        if self.database.url.is_empty() {
            o.push_str("# [database]\n# url = \"postgres://estuary:PASSWORD@db.example.com:5432/estuary?sslmode=verify-full&sslrootcert=/etc/estuary/db-ca.pem\"\n\n");
        } else {
            o.push_str(&format!(
                "[database]\nurl = {}\n\n",
                toml::Value::String(self.database.url.clone())
            ));
        }
        o
    }

    fn upstream_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let p = |v: &Path| s(&v.display().to_string());
        let mut o = String::new();
        o.push_str("# RA mode: this server has no CA of its own and forwards enrollments to a parent EST\n");
        o.push_str("# server (also `estuary serve --upstream URL ...`). Keys:\n");
        o.push_str(
            "#   url          - the parent's https://HOST[:PORT]/.well-known/est (required)\n",
        );
        o.push_str("#   ca           - PEM trust anchor for the parent's TLS certificate (relative to the data dir)\n");
        o.push_str(
            "#   user + password (Basic), or cert + key (PEM files): exactly one credential\n",
        );
        o.push_str("#   server_label - parent label for this server's TLS certificate (default \"est-server\")\n");
        o.push_str("#   ra_label     - parent label for this RA's certificate, EKU cmcRA (default \"est-ra\")\n");
        o.push_str(
            "#   timeout      - deadline of one upstream request (default \"10s\", at most 60s)\n",
        );
        o.push_str("#   crl_refresh  - how often the parent's CRL is fetched (default \"5m\")\n");
        match &self.upstream {
            None => {
                o.push_str(
                    "# [upstream]\n# url = \"https://ca.example.com:8443/.well-known/est\"\n",
                );
                o.push_str("# ca = \"upstream-ca.pem\"\n# cert = \"ra-cert.pem\"\n# key = \"ra-key.pem\"\n\n");
            }
            Some(u) => {
                o.push_str(&format!("[upstream]\nurl = {}\n", s(&u.url)));
                if let Some(ca) = &u.ca {
                    o.push_str(&format!("ca = {}\n", p(ca)));
                }
                if let Some(user) = &u.user {
                    o.push_str(&format!("user = {}\n", s(user)));
                }
                if let Some(password) = &u.password {
                    o.push_str(&format!("password = {}\n", s(password)));
                }
                if let Some(cert) = &u.cert {
                    o.push_str(&format!("cert = {}\n", p(cert)));
                }
                if let Some(key) = &u.key {
                    o.push_str(&format!("key = {}\n", p(key)));
                }
                o.push_str(&format!(
                    "server_label = {}\nra_label = {}\ntimeout = {}\ncrl_refresh = {}\n\n",
                    s(&u.server_label),
                    s(&u.ra_label),
                    s(&u.timeout),
                    s(&u.crl_refresh)
                ));
            }
        }
        o
    }

    fn registration_authorities_toml(&self) -> String {
        let s = |v: &str| toml::Value::String(v.to_string()).to_string();
        let mut o = String::new();
        o.push_str("# Registration authorities that may forward their clients' requests to this server, by\n");
        o.push_str("# the CN of their certificate (EKU cmcRA, issued by this CA); a label admits one with\n");
        o.push_str("# auth = [\"ra:NAME\"]. subject: the CNs it may request (a regular expression for the\n");
        o.push_str(
            "# whole CN; then the subject may hold CNs only; absent = any subject). sans: the\n",
        );
        o.push_str("# subjectAltName entries it may request, as DNS:x, IP:x, email:x, URI:x (absent = none\n");
        o.push_str("# when subject is set, any when it is not).\n");
        if self.registration_authorities.is_empty() {
            o.push_str(
                "# [registration_authorities.\"ra.example.com\"]\n# subject = \"sensor-[0-9]+\"\n# sans = \"DNS:sensor-[0-9]+\\\\.plant1\\\\.example\"\n",
            );
        }
        for (name, ra) in &self.registration_authorities {
            o.push_str(&format!("[registration_authorities.{}]\n", toml_key(name)));
            if let Some(subject) = &ra.subject {
                o.push_str(&format!("subject = {}\n", s(subject)));
            }
            if let Some(sans) = &ra.sans {
                o.push_str(&format!("sans = {}\n", s(sans)));
            }
        }
        o.push('\n');
        o
    }
}

/// A table key as TOML writes it (quoted unless bare).
pub(crate) fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// One key of the file, as `docs/configuration.md` documents it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    /// Where the key lives: `top`, `label` (`[default]` and `[labels.NAME]`), `profiles`,
    /// `crl`, `rate_limits`, `audit`, `limits`, `users`, `database`, `upstream`,
    /// `registration_authorities`.
    pub section: &'static str,
    /// The key.
    pub key: &'static str,
    /// Its type, in Markdown.
    pub kind: &'static str,
    /// Its default, in Markdown; `None` for a section without defaults (`[[users]]`).
    pub default: Option<&'static str>,
    /// What it does, in Markdown.
    pub meaning: &'static str,
}

/// Every key of the file: the one source of the reference tables in `docs/configuration.md`.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        section: "top",
        key: "dev",
        kind: "bool",
        default: Some("`false`"),
        meaning: "Test mode: the IoT Edge tutorial's settings, with a warning at start. `--dev` sets it.",
    },
    KeyDoc {
        section: "top",
        key: "listen",
        kind: "list of `ADDR:PORT`",
        default: Some(r#"`["0.0.0.0:8085", "[::]:8085"]`"#),
        meaning: "TLS listen addresses. `[::]` is bound IPv6-only beside `0.0.0.0`; an IPv6 address that cannot be bound is skipped with a warning when another address works.",
    },
    KeyDoc {
        section: "top",
        key: "validity",
        kind: "duration",
        default: Some(r#"`"90d"` (`"1d"` in dev)"#),
        meaning: "Lifetime of issued certificates unless the profile sets one (never beyond the CA's own `notAfter`).",
    },
    KeyDoc {
        section: "top",
        key: "ca_key",
        kind: "`p256`, `p384`, `rsa2048`, `rsa3072`, `rsa4096`, `ed25519`",
        default: Some(r#"`"p256"`"#),
        meaning: "Key type of the CA when the server creates it. The TLS server key has the same type (P-256 when the CA is Ed25519, which few TLS clients accept).",
    },
    KeyDoc {
        section: "top",
        key: "ca_key_uri",
        kind: "RFC 7512 `pkcs11:` URI",
        default: Some("none (`ca-key.pem`)"),
        meaning: r#"The CA key in a PKCS#11 token (an HSM, SoftHSM2) instead of `ca-key.pem`: `pkcs11:token=LABEL;object=KEY-LABEL?module-path=/path/lib.so&pin-source=file:/ABSOLUTE/PIN-FILE`. Set by `estuary ca init --key-uri` and `estuary ca import --key-uri`; `serve` then signs certificates and CRLs in the token, and refuses to start if `ca-key.pem` exists too. Without `module-path`, the library comes from `ESTUARY_PKCS11_MODULE`. `pin-value=` works but puts the PIN in this file; prefer a PIN file of mode 0600. A token that stops answering (after one reopened session and retry) makes enrollments answer 503. See [hsm.md](hsm.md)."#,
    },
    KeyDoc {
        section: "top",
        key: "server_sans",
        kind: "list",
        default: Some("`[]`"),
        meaning: "DNS names or IPs for the TLS server certificate beyond `localhost`, `127.0.0.1`, `::1`. A new entry re-issues the server certificate (same key) at the next start, and the log says so with the certificate's SANs (`TLS server certificate re-issued`). `estuary serve --san NAME` adds NAME here (the file is edited in place, comments kept; logged as `--san recorded in server_sans`), so the file always lists what the certificate holds. Removing an entry does not re-issue: the certificate keeps the name until you delete `server-cert.pem` (the key stays) and restart.",
    },
    KeyDoc {
        section: "top",
        key: "bootstrap_ca",
        kind: "list of PEM paths",
        default: Some("`[]`"),
        meaning: r#"Trust anchors whose certificates (directly or through intermediates the client sends) may authenticate `simpleenroll` (RFC 7030 §3.3.2). Each is named by its file stem (`mfg-acme.pem` is `mfg-acme`) for `auth = ["bootstrap:mfg-acme"]`."#,
    },
    KeyDoc {
        section: "top",
        key: "bootstrap_crl",
        kind: "table: bootstrap CA name = file or `http://` URL",
        default: Some("`{}`"),
        meaning: r#"A CRL per bootstrap CA (DER or PEM), e.g. `bootstrap_crl = { mfg-acme = "http://pki.acme.example/mfg.crl" }`. It must be issued and signed by that CA (checked at load; a bad file stops the start or the reload; an unreachable URL does not stop the start, but that CA's certificates are refused until the CRL is fetched, retried every 5 minutes). Certificates it lists are refused; while it is past its `nextUpdate`, every certificate of that CA is refused (revocation cannot be checked). Files are re-read every 5 minutes, URLs fetched hourly and when the CRL nears its `nextUpdate` (a failed fetch keeps the previous CRL). Only `http://`: CRLs are signed, and RFC 5280 §4.2.1.13 serves them over http."#,
    },
    KeyDoc {
        section: "top",
        key: "csrattrs",
        kind: "list of OIDs",
        default: Some("`[]`"),
        meaning: "What `GET /csrattrs` returns (RFC 7030 §4.5); empty means 204.",
    },
    KeyDoc {
        section: "top",
        key: "approval_retry_after",
        kind: "duration",
        default: Some(r#"`"60s"`"#),
        meaning: "`Retry-After` of a 202 for a request waiting for manual approval; at most a day.",
    },
    KeyDoc {
        section: "top",
        key: "admin_listen",
        kind: r#"`ADDR:PORT` or `""`"#,
        default: Some(r#"`"127.0.0.1:9090"`"#),
        meaning: r#"Plain-HTTP `/metrics`, `/healthz`, `/readyz` (and `/crl`). Empty = off. Keep it on loopback or a management network. A port that cannot be bound (in use, not permitted) stops the start with an error, as for `listen`; set `""` if you do not want the listener."#,
    },
    KeyDoc {
        section: "label",
        key: "profile",
        kind: "profile name or `auto`",
        default: Some(r#"`"device"` (`"auto"` for `[default]` in dev)"#),
        meaning: "Which profile issues. `auto`: `edge-ca` for a CSR asking for CA:TRUE, `device` otherwise (the tutorial's behaviour).",
    },
    KeyDoc {
        section: "label",
        key: "auth",
        kind: "list",
        default: Some("`basic` and `client-cert`"),
        meaning: "Who may use the label: `basic` (any user), `basic:NAME`, `client-cert` (any certificate this CA issued), `client-cert:label:NAME` (certificates whose line began at that label: issued there to a password or a bootstrap certificate, or renewed later (same subject, same subjectAltName or none) with such a certificate, wherever that was; a certificate for another name begins a new line where it is issued; `default` = the unlabeled path), `client-cert:profile:NAME` (issued under that profile), `bootstrap` (any bootstrap CA), `bootstrap:NAME`, `ra:NAME` (the registration authority whose certificate has CN NAME, forwarding for its clients; it must have a `[registration_authorities.NAME]` table), and in `--dev` only `ra` (any registration authority certificate of this CA). Without `auth`, a label accepts any Basic user and any certificate of this CA, but no bootstrap certificate: those only where a label names them, so adding a bootstrap CA opens no label by itself. Certificates of this CA authenticate only if they are end-entity certificates for client authentication (EKU clientAuth or none), valid, recorded in the store and not revoked. A request is authorized by the first of its valid credentials that the label accepts and whose `subject` rule the CSR satisfies (client certificate, bootstrap certificate, then Basic); otherwise 403 says what the label accepts. **Outside `--dev`, a label whose profile issues CA certificates (`ca = true`, or `auto`) accepts only named identities** (`basic:NAME`, `client-cert:label:NAME`, `bootstrap:NAME`, `ra:NAME`): `basic`, `client-cert`, `client-cert:profile:NAME` (every certificate of a profile, wherever issued), `bootstrap` or a missing `auth` there is an error at `config check` and at start.",
    },
    KeyDoc {
        section: "label",
        key: "subject",
        kind: "`same-as-client-cert`, `any`, or a pattern",
        default: Some("`same-as-client-cert` (`any` in `--dev`)"),
        meaning: r#"What a request authenticated by a certificate (this CA's or a bootstrap CA's) may ask for with `simpleenroll`/`serverkeygen`. `same-as-client-cert`: the certificate's subject, byte for byte, and its subjectAltName or none. A pattern is a regular expression that every CN of the CSR must match whole, in which `{client_cn}` stands for the client certificate's CN, e.g. `"aziot-edge CA {client_cn}"`. Requests authenticated by Basic are bound by the profile instead; `simplereenroll` always keeps subject and subjectAltName (RFC 7030 §4.2.2). See [production.md](production.md#4-who-may-get-which-certificate) for the IoT Edge flows."#,
    },
    KeyDoc {
        section: "label",
        key: "approval",
        kind: "`auto`, `manual`, `manual-first`",
        default: Some(r#"`"auto"`"#),
        meaning: "`manual`: a new request is recorded and answered `202 Accepted` with `Retry-After` until an operator runs `estuary requests approve ID` (or `reject ID --reason`); the client's repeated request (same CSR) then gets its certificate, or 403 with the reason (RFC 7030 §4.2.3). Pending requests survive restarts; at most 100 may wait per identity, 20 per source address (IPv6: per /64) and 1 per public key (then 429). `manual-first`: the same for a first enrollment, but a renewal authenticated by the certificate of this CA that it renews (same subject, same subjectAltName or none) is issued at once: an operator approves a device (or a registration authority) once, not every renewal.",
    },
    KeyDoc {
        section: "label",
        key: "serverkeygen",
        kind: "bool",
        default: Some("`false`"),
        meaning: r#"Offer `/serverkeygen` (RFC 7030 §4.4): the server makes the key pair (type from the profile's `serverkeygen_key_type`, else the CSR's key type), issues, and returns `multipart/mixed` with the `application/pkcs8` key part then the certs-only part. The key is never stored or logged, so under `approval = "manual"` the approved request is answered with its key once: a repeat gets 403, and a device that lost that answer must send a new request. Otherwise 501."#,
    },
    KeyDoc {
        section: "label",
        key: "upstream_label",
        kind: "label name",
        default: Some("the same name"),
        meaning: "With `[upstream]` (RA mode): the parent's label this label forwards to; `default` is the parent's unlabeled path. Absent: the label of the same name at the parent; `[default]` forwards to the parent's unlabeled path. Ignored without `[upstream]`.",
    },
    KeyDoc {
        section: "profiles",
        key: "validity",
        kind: "duration",
        default: Some("the top-level `validity`"),
        meaning: "Lifetime of certificates of this profile.",
    },
    KeyDoc {
        section: "profiles",
        key: "key_types",
        kind: "list: `p256`, `p384`, `ed25519`, `rsa2048`, `rsa3072`, `rsa4096`",
        default: Some("all"),
        meaning: "Keys certified; others are refused.",
    },
    KeyDoc {
        section: "profiles",
        key: "key_usage",
        kind: "list: `digitalSignature`, `nonRepudiation`, `keyEncipherment`, `dataEncipherment`, `keyAgreement`, `keyCertSign`, `cRLSign`",
        default: Some("`digitalSignature` (CA: `keyCertSign`, `cRLSign`, `digitalSignature`)"),
        meaning: "keyUsage granted.",
    },
    KeyDoc {
        section: "profiles",
        key: "extended_key_usage",
        kind: "list: `clientAuth`, `serverAuth`, `codeSigning`, `emailProtection`, `timeStamping`, `OCSPSigning`, `cmcRA` (id-kp-cmcRA, RFC 6402) or dotted OIDs",
        default: Some("`clientAuth` (CA: none)"),
        meaning: "EKU granted.",
    },
    KeyDoc {
        section: "profiles",
        key: "ca",
        kind: "bool",
        default: Some("`false`"),
        meaning: "Issue CA certificates. A non-CA profile refuses CSRs asking for CA:TRUE or keyCertSign/cRLSign.",
    },
    KeyDoc {
        section: "profiles",
        key: "pathlen",
        kind: "integer",
        default: Some("none"),
        meaning: "pathLenConstraint of a CA profile; a CSR asking for a larger one is refused.",
    },
    KeyDoc {
        section: "profiles",
        key: "cn_pattern",
        kind: "regular expression",
        default: Some("none"),
        meaning: "The whole CN must match (anchored).",
    },
    KeyDoc {
        section: "profiles",
        key: "cn_equals_username",
        kind: "bool",
        default: Some("`false`"),
        meaning: "The CN must equal the Basic user name (requests authenticated otherwise are refused).",
    },
    KeyDoc {
        section: "profiles",
        key: "san_types",
        kind: "list: `dns`, `ip`, `email`, `uri`",
        default: Some("all"),
        meaning: "subjectAltName entry types copied; a CSR with another type is refused, and so is one whose DNS name, email address or URI holds a control character (a NUL in `bank.example\\0.evil.example` would make one parser read another name than the next).",
    },
    KeyDoc {
        section: "profiles",
        key: "serverkeygen_key_type",
        kind: "`p256`, `p384`, `rsa2048`, `rsa3072`, `rsa4096`, `ed25519`",
        default: Some("the CSR's key type"),
        meaning: "Key type `serverkeygen` generates.",
    },
    KeyDoc {
        section: "crl",
        key: "validity",
        kind: "duration",
        default: Some(r#"`"1d"`"#),
        meaning: "`nextUpdate - thisUpdate`. The CA re-signs the CRL on every revocation (within a second, also when `estuary certs revoke` ran in another process) and when half of this has passed, so `nextUpdate` is never reached while the server runs (`/readyz` fails if it ever is). A revoked certificate stays on the CRL until its own `notAfter`.",
    },
    KeyDoc {
        section: "crl",
        key: "url",
        kind: r#"URL or `""`"#,
        default: Some(r#"`""`"#),
        meaning: "Written into issued certificates as CRL distribution point (RFC 5280 §4.2.1.13).",
    },
    KeyDoc {
        section: "crl",
        key: "listen",
        kind: r#"`ADDR:PORT` or `""`"#,
        default: Some(r#"`""`"#),
        meaning: "Plain-HTTP listener serving `GET /crl` (DER, `application/pkix-crl`), for relying parties that fetch CRLs over http. The EST listener always serves `/crl` too.",
    },
    KeyDoc {
        section: "rate_limits",
        key: "per_address_per_minute",
        kind: "integer",
        default: Some("`600`"),
        meaning: "Requests from one source IP address (IPv6: one /64), to any endpoint; `0` = off. With the default `failed_auth_cost` an address gets a burst of ten wrong passwords, then one every six seconds. Size it for NAT. Requests forwarded by a registration authority (its RA certificate) are not counted.",
    },
    KeyDoc {
        section: "rate_limits",
        key: "per_identity_per_minute",
        kind: "integer",
        default: Some("`0` (off)"),
        meaning: "Enrollments by one authenticated identity (`basic:NAME`, `cert:SUBJECT`, `bootstrap:CA:SUBJECT`).",
    },
    KeyDoc {
        section: "rate_limits",
        key: "failed_auth_cost",
        kind: "integer",
        default: Some("`60`"),
        meaning: "What a failed authentication costs against the address's budget, so password guessing runs out far sooner than a device that enrolls.",
    },
    KeyDoc {
        section: "audit",
        key: "retention",
        kind: r#"duration or `""`"#,
        default: Some(r#"`"90d"`"#),
        meaning: r#"Audit events older than this are deleted, hourly by the server and by `estuary audit prune`; `""` keeps them for ever. Refusals of requests that proved no identity are summed into one event a minute rather than written one by one."#,
    },
    KeyDoc {
        section: "limits",
        key: "max_connections",
        kind: "integer",
        default: Some("`10000`"),
        meaning: "Concurrent EST connections; more are closed at once. The plain-HTTP listeners (`admin_listen`, `crl.listen`) have their own cap of 256 each (or this value if smaller). Capped at start to what the open-file limit allows, with a warning (see [production.md](production.md#9-run-it-as-a-service)).",
    },
    KeyDoc {
        section: "limits",
        key: "max_connections_per_address",
        kind: "integer",
        default: Some("`1000`"),
        meaning: "Concurrent EST connections from one address (IPv4, or an IPv6 /64); more from it are closed at once, so one host (or a few idle clients multiplied) cannot take every connection. Devices behind one NAT address share it. Raise it for a load test from one machine (`estuary bench --idle-connections`).",
    },
    KeyDoc {
        section: "limits",
        key: "proxy_protocol_from",
        kind: "list of IP addresses",
        default: Some("`[]`"),
        meaning: "Load balancers in TCP mode (HAProxy with `send-proxy-v2` or `send-proxy`) whose connections begin with a PROXY protocol header (versions 1 and 2) naming the device's address. That address then counts for the per-address rate limit, the failed-login cost, `max_connections_per_address`, the audit trail and the logs; without it every device behind the load balancer shares its address. A connection from a listed address without a valid header (within `handshake_timeout`) is closed; the header is not accepted from any other address. See [cluster.md](cluster.md).",
    },
    KeyDoc {
        section: "limits",
        key: "max_body_bytes",
        kind: "integer (at least 1024)",
        default: Some("`65536`"),
        meaning: "Largest request body (413 above).",
    },
    KeyDoc {
        section: "limits",
        key: "handshake_timeout",
        kind: "duration",
        default: Some(r#"`"10s"`"#),
        meaning: "Time for the TLS handshake; a client that opens a TCP connection and sends nothing is dropped after it.",
    },
    KeyDoc {
        section: "limits",
        key: "header_timeout",
        kind: "duration",
        default: Some(r#"`"30s"`"#),
        meaning: "Time to send the request headers; also how long an idle keep-alive connection is kept.",
    },
    KeyDoc {
        section: "limits",
        key: "body_timeout",
        kind: "duration",
        default: Some(r#"`"30s"`"#),
        meaning: "Time to send the request body (408 after it).",
    },
    KeyDoc {
        section: "limits",
        key: "max_connection_age",
        kind: "duration",
        default: Some(r#"`"10m"`"#),
        meaning: "Longest life of one connection. The first answer after it carries `Connection: close` and the connection closes once it is sent, so a device is never cut off in the middle of a request; a client that is not taking its answers is cut `header_timeout` later. So a client that stops reading responses cannot hold a connection slot for ever.",
    },
    KeyDoc {
        section: "users",
        key: "name",
        kind: "string",
        default: None,
        meaning: "Basic user name (no `:`).",
    },
    KeyDoc {
        section: "users",
        key: "password_hash",
        kind: "argon2 PHC string",
        default: None,
        meaning: "Written by `estuary user add NAME` (prompts, or `--password-stdin`; at least 12 characters); `estuary user remove NAME` deletes the user. Both keep the file's comments.",
    },
    KeyDoc {
        section: "database",
        key: "url",
        kind: "`sqlite:PATH` or `postgres://` URL",
        default: Some("`sqlite:DATA_DIR/estuary.db`"),
        meaning: "The certificate store. `postgres://USER:PASSWORD@HOST:PORT/DATABASE` with libpq's `sslmode` (`disable`, `prefer` (default), `require`, `verify-ca`, `verify-full`) and `sslrootcert=FILE`; several nodes may share it (docs/cluster.md). `--database` and `ESTUARY_DATABASE` override it; every store command (`certs`, `audit`, `requests`) uses it too. A relative `sqlite:` path is taken from the working directory, not the data directory: write it absolute.",
    },
    KeyDoc {
        section: "upstream",
        key: "url",
        kind: "`https://` URL",
        default: Some("required"),
        meaning: "The parent EST server's `https://HOST[:PORT]/.well-known/est`.",
    },
    KeyDoc {
        section: "upstream",
        key: "ca",
        kind: "PEM path",
        default: Some("required"),
        meaning: "Trust anchor (PEM) for the parent's TLS certificate, e.g. the parent's `ca-cert.pem`; relative to the data directory.",
    },
    KeyDoc {
        section: "upstream",
        key: "user",
        kind: "string",
        default: Some("none"),
        meaning: "Basic user at the parent (with `password`). `serve --upstream-user USER:PASSWORD` or `ESTUARY_UPSTREAM_USER` sets both.",
    },
    KeyDoc {
        section: "upstream",
        key: "password",
        kind: "string",
        default: Some("none"),
        meaning: "Basic password at the parent (with `user`). Keep the file readable only by the service.",
    },
    KeyDoc {
        section: "upstream",
        key: "cert",
        kind: "PEM path",
        default: Some("none"),
        meaning: "Client certificate (chain) for the parent (with `key`); relative to the data directory. Exactly one credential: `user` + `password` or `cert` + `key`.",
    },
    KeyDoc {
        section: "upstream",
        key: "key",
        kind: "PEM path",
        default: Some("none"),
        meaning: "Private key of `cert`.",
    },
    KeyDoc {
        section: "upstream",
        key: "server_label",
        kind: "label name",
        default: Some(r#"`"est-server"`"#),
        meaning: "Parent label where the RA enrolls its own TLS server certificate.",
    },
    KeyDoc {
        section: "upstream",
        key: "ra_label",
        kind: "label name",
        default: Some(r#"`"est-ra"`"#),
        meaning: "Parent label where the RA enrolls its RA client certificate (EKU id-kp-cmcRA).",
    },
    KeyDoc {
        section: "upstream",
        key: "timeout",
        kind: "duration (at most `60s`)",
        default: Some(r#"`"10s"`"#),
        meaning: "Deadline for one request to the parent.",
    },
    KeyDoc {
        section: "upstream",
        key: "crl_refresh",
        kind: "duration",
        default: Some(r#"`"5m"`"#),
        meaning: "How often the parent's CRL is fetched.",
    },
    KeyDoc {
        section: "registration_authorities",
        key: "subject",
        kind: "regular expression",
        default: Some("any"),
        meaning: "The subject CNs this RA may request for its clients (the whole CN must match); with a pattern the subject may hold CNs only (no O, OU, serialNumber, UID, ...). Absent: any subject. `{client_cn}` is not accepted here.",
    },
    KeyDoc {
        section: "registration_authorities",
        key: "sans",
        kind: "regular expression",
        default: Some("none if `subject` is set, else any"),
        meaning: "The subjectAltName entries this RA may request, each matched whole in the form `DNS:name`, `IP:address`, `email:address` or `URI:uri` (e.g. `\"DNS:[a-z0-9-]+\\\\.plant1\\\\.example\"`).",
    },
];

/// The reference table of one section, in Markdown.
pub fn reference_table(section: &str) -> String {
    let rows: Vec<&KeyDoc> = KEYS.iter().filter(|k| k.section == section).collect();
    let with_default = rows.iter().any(|k| k.default.is_some());
    let mut o = String::new();
    if with_default {
        o.push_str("| Key | Type | Default | Meaning |\n| --- | --- | --- | --- |\n");
    } else {
        o.push_str("| Key | Type | Meaning |\n| --- | --- | --- |\n");
    }
    for k in rows {
        match k.default {
            Some(d) if with_default => o.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.key, k.kind, d, k.meaning
            )),
            _ => o.push_str(&format!("| `{}` | {} | {} |\n", k.key, k.kind, k.meaning)),
        }
    }
    o
}

/// Markers of a generated table; each on a line of its own.
const BLOCK_START: &str = "\n<!-- keys:";
const BLOCK_END: &str = "<!-- /keys -->";

/// `doc` (the text of `docs/configuration.md`) with every `<!-- keys:SECTION -->` ...
/// `<!-- /keys -->` block (markers at the start of a line) replaced by that section's generated table. Errors name a block
/// that is not closed or a section that has no keys.
pub fn update_reference(doc: &str) -> Result<String, crate::error::ServerError> {
    use crate::error::ServerError;
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(start) = rest.find(BLOCK_START) {
        let after = &rest[start + BLOCK_START.len()..];
        let Some((section, body)) = after.split_once(" -->\n") else {
            return Err(ServerError::UnterminatedKeysMarker);
        };
        if !KEYS.iter().any(|k| k.section == section) {
            return Err(ServerError::UnknownKeysSection(section.to_string()));
        }
        let Some(end) = body.find(BLOCK_END) else {
            return Err(ServerError::UnclosedKeysBlock(section.to_string()));
        };
        // Up to and including the newline before the marker.
        out.push_str(&rest[..start]);
        out.push_str(&format!(
            "{BLOCK_START}{section} -->\n{}{BLOCK_END}",
            reference_table(section)
        ));
        rest = &body[end + BLOCK_END.len()..];
    }
    out.push_str(rest);
    Ok(out)
}
