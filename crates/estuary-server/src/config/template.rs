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
        line("#   approval     - auto, or manual: 202 + Retry-After until `estuary requests approve ID`");
        line("#   serverkeygen - offer /serverkeygen (the server makes the key)");
        let label = |o: &mut String, header: &str, l: &LabelConfig| {
            o.push_str(&format!("[{header}]\nprofile = {}\n", s(&l.profile)));
            if let Some(auth) = &l.auth {
                o.push_str(&format!("auth = {}\n", list(auth)));
            }
            if let Some(subject) = &l.subject {
                o.push_str(&format!("subject = {}\n", s(subject)));
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
        o.push_str("# clientAuth) and edge-ca (CA:TRUE pathlen:0, keyCertSign+cRLSign+digitalSignature).\n");
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
        o.push_str("# Longest life of one connection (a client that stops reading cannot hold a slot for ever).\n");
        o.push_str(&format!(
            "max_connection_age = {}\n\n",
            s(&l.max_connection_age)
        ));
        o.push_str("# HTTP Basic users (RFC 7617). Add one with `estuary user add NAME`.\n");
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

fn toml_key(k: &str) -> String {
    if k.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}
