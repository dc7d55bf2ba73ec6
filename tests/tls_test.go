package tests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/agnes-ai/connector-kit/connectors/builtin"
	"github.com/agnes-ai/connector-kit/internal/cli"
	"github.com/agnes-ai/connector-kit/internal/config"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/stack"
	"github.com/nats-io/nats.go"
)

// testCA makes a certificate authority in dir and returns its certificate
// file and a function that issues a server certificate for 127.0.0.1,
// returning its certificate and key files.
func testCA(t *testing.T, dir, name string) (caFile string, issue func() (cert, key string)) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile = write(name+"-ca.pem", "CERTIFICATE", caDER)
	return caFile, func() (string, string) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "agnes-nats"}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(key)
		return write(name+"-server.pem", "CERTIFICATE", der), write(name+"-server-key.pem", "EC PRIVATE KEY", kb)
	}
}

// TestTLS: with nats.tls.cert and key, a listening da serve takes TLS
// clients only; a client with the test CA (the config's nats.tls.ca or
// $DA_NATS_CA) connects, one without it or with another CA is refused,
// and the CLI says how to trust the server.
func TestTLS(t *testing.T) {
	t.Setenv("NATS_URL", "")
	t.Setenv(cli.NATSURLEnv, "")
	t.Setenv(cli.NATSCredsEnv, "")
	t.Setenv(cli.NATSCAEnv, "")
	dir := t.TempDir()
	caFile, issue := testCA(t, t.TempDir(), "agnes-test")
	otherCA, _ := testCA(t, t.TempDir(), "someone-else")
	cert, key := issue()
	cfg := config.Default()
	cfg.DataDir = dir
	cfg.NATS.TLS = config.NATSTLS{Cert: cert, Key: key}
	st, err := stack.Start(context.Background(), stack.Options{Config: cfg, Registry: builtin.Registry(), DataDir: dir,
		ListenHost: "127.0.0.1", ListenPort: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Stop()
	url := st.Server.ClientURL()
	connect := func(ca string) error {
		opts, err := natsbus.ClientIdentity{Creds: cliCreds(dir), CA: ca}.Options()
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(url, append(opts, nats.Timeout(5*time.Second))...)
		if err == nil {
			defer nc.Close()
			if !nc.TLSRequired() {
				t.Errorf("connected without TLS")
			}
		}
		return err
	}
	if err := connect(caFile); err != nil {
		t.Fatalf("a client with the CA: %v", err)
	}
	var unknown x509.UnknownAuthorityError
	for name, ca := range map[string]string{"no CA (the system's)": "", "another CA": otherCA} {
		if err := connect(ca); err == nil || !(errors.As(err, &unknown) || strings.Contains(err.Error(), "x509:")) {
			t.Errorf("a client with %s: %v, want a certificate error", name, err)
		}
	}
	// The CLI: without the CA it says how to trust the server; with it
	// (env), it reads the history.
	var o, e bytes.Buffer
	if code := cli.Run(context.Background(), []string{"runs", "--nats-url", url, "--data-dir", dir}, &o, &e); code != 1 ||
		!strings.Contains(e.String(), "name its CA in nats.tls.ca or $DA_NATS_CA") {
		t.Errorf("da runs without the CA: %d %s", code, e.String())
	}
	t.Setenv(cli.NATSCAEnv, caFile)
	e.Reset()
	if code := cli.Run(context.Background(), []string{"runs", "--nats-url", url, "--data-dir", dir}, &o, &e); code != 0 {
		t.Errorf("da runs with the CA: %d %s", code, e.String())
	}
}
