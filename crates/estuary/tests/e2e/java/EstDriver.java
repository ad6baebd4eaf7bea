// A tiny Bouncy Castle EST client for the end-to-end tests (bouncycastle.rs compiles and runs it).
//
//   EstDriver cacerts  HOST:PORT CA.pem OUT.pem
//   EstDriver enroll   HOST:PORT CA.pem ec|rsa CN USER PASS OUT   (writes OUT.key, OUT.pem; polls a 202)
//   EstDriver reenroll HOST:PORT CA.pem CERT.pem KEY.pem OUT      (TLS client cert only; same key type and subject)
//   EstDriver csrattrs HOST:PORT CA.pem                           (prints "none" or one OID a line)
//
// java -Dlabel=NAME uses /.well-known/est/NAME/. The server certificate is verified against CA.pem,
// and its name against HOST by Bouncy Castle's default host name check.

import java.io.FileInputStream;
import java.io.FileReader;
import java.io.FileWriter;
import java.io.IOException;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Security;
import java.security.cert.CertificateFactory;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.Collections;
import java.util.Set;
import javax.net.ssl.KeyManagerFactory;
import org.bouncycastle.asn1.ASN1ObjectIdentifier;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x500.X500Name;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.CSRRequestResponse;
import org.bouncycastle.est.ESTAuth;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.jcajce.JcaHttpAuthBuilder;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.openssl.PEMParser;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.openssl.jcajce.JcaPEMWriter;
import org.bouncycastle.openssl.jcajce.JcaPKCS8Generator;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;

public class EstDriver {
    public static void main(String[] a) throws Exception {
        // getCertPathTrustManager asks for the "BC" provider by name.
        Security.addProvider(new BouncyCastleProvider());
        String server = a[1];
        X509Certificate ca = readCert(a[2]);
        switch (a[0]) {
            case "cacerts": {
                CACertsResponse r = builder(server, ca).build().getCACerts();
                writePem(a[3], ESTService.storeToArray(r.getCertificateStore()));
                break;
            }
            case "enroll": {
                KeyPair keys = generate(a[3]);
                ESTAuth auth = new JcaHttpAuthBuilder(a[5], a[6].toCharArray()).build();
                ESTService est = builder(server, ca).build();
                EnrollmentResponse r = est.simpleEnroll(false, csr(new X500Name("CN=" + a[4]), keys), auth);
                // 202 (manual approval): ask again after Retry-After, at most 60 times.
                for (int polls = 0; !r.isCompleted() && polls < 60; polls++) {
                    System.out.println("pending");
                    Thread.sleep(Math.max(0, r.getNotBefore() - System.currentTimeMillis()));
                    r = est.simpleEnroll(r);
                }
                writeResult(r, keys, a[7]);
                break;
            }
            case "reenroll": {
                X509Certificate old = readCert(a[3]);
                PrivateKey oldKey = readKey(a[4]);
                KeyStore ks = KeyStore.getInstance("PKCS12");
                ks.load(null, null);
                ks.setKeyEntry("device", oldKey, new char[0], new X509Certificate[] {old});
                KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
                kmf.init(ks, new char[0]);
                KeyPair keys = generate(oldKey.getAlgorithm().equals("RSA") ? "rsa" : "ec");
                X500Name subject = X500Name.getInstance(old.getSubjectX500Principal().getEncoded());
                EnrollmentResponse r = builder(server, ca).withKeyManagers(kmf.getKeyManagers()).build()
                        .simpleEnroll(true, csr(subject, keys), null);
                writeResult(r, keys, a[5]);
                break;
            }
            case "csrattrs": {
                CSRRequestResponse r = builder(server, ca).build().getCSRAttributes();
                if (!r.hasAttributesResponse() || r.getAttributesResponse().isEmpty()) {
                    System.out.println("none");
                } else {
                    for (ASN1ObjectIdentifier oid : r.getAttributesResponse().getRequirements()) {
                        System.out.println(oid.getId());
                    }
                }
                break;
            }
            default:
                throw new IllegalArgumentException("unknown command " + a[0]);
        }
    }

    /** The server as "host:port" (Bouncy Castle adds /.well-known/est itself); -Dlabel=NAME adds a label. */
    static JsseESTServiceBuilder builder(String server, X509Certificate ca) {
        Set<TrustAnchor> anchors = Collections.singleton(new TrustAnchor(ca, null));
        JsseESTServiceBuilder b = new JsseESTServiceBuilder(server, JcaJceUtils.getCertPathTrustManager(anchors, null));
        if (System.getProperty("label") != null) {
            b.withLabel(System.getProperty("label"));
        }
        return b;
    }

    static KeyPair generate(String type) throws Exception {
        KeyPairGenerator g;
        if (type.equals("rsa")) {
            g = KeyPairGenerator.getInstance("RSA");
            g.initialize(2048);
        } else {
            g = KeyPairGenerator.getInstance("EC");
            g.initialize(new ECGenParameterSpec("secp256r1"));
        }
        return g.generateKeyPair();
    }

    static PKCS10CertificationRequest csr(X500Name subject, KeyPair keys) throws Exception {
        String alg = keys.getPrivate().getAlgorithm().equals("RSA") ? "SHA256withRSA" : "SHA256withECDSA";
        return new JcaPKCS10CertificationRequestBuilder(subject, keys.getPublic())
                .build(new JcaContentSignerBuilder(alg).build(keys.getPrivate()));
    }

    static void writeResult(EnrollmentResponse r, KeyPair keys, String out) throws IOException {
        if (!r.isCompleted()) {
            throw new IllegalStateException("enrollment not completed (retry after " + r.getNotBefore() + ")");
        }
        writePem(out + ".pem", ESTService.storeToArray(r.getStore()));
        writePem(out + ".key", new Object[] {new JcaPKCS8Generator(keys.getPrivate(), null)});
    }

    static void writePem(String path, Object[] objects) throws IOException {
        try (JcaPEMWriter w = new JcaPEMWriter(new FileWriter(path))) {
            for (Object o : objects) {
                w.writeObject(o);
            }
        }
    }

    static X509Certificate readCert(String path) throws Exception {
        try (FileInputStream in = new FileInputStream(path)) {
            return (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
    }

    static PrivateKey readKey(String path) throws Exception {
        try (PEMParser p = new PEMParser(new FileReader(path))) {
            return new JcaPEMKeyConverter().getPrivateKey((PrivateKeyInfo) p.readObject());
        }
    }
}
