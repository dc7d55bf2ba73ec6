package gateway

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strings"
	"testing"
)

func TestVerify(t *testing.T) {
	body := []byte(`{"webhookEvent":"jira:issue_updated","issue":{"key":"OPS-1"}}`)
	m := hmac.New(sha256.New, []byte("s3cret"))
	m.Write(body)
	sig := hex.EncodeToString(m.Sum(nil))
	ok := []http.Header{
		{HeaderSignature256: {"sha256=" + sig}},
		{HeaderSignature256: {sig}},
		{HeaderSignature256: {"SHA256=" + strings.ToUpper(sig)}},
		{HeaderSignature: {"sha256=" + sig}},
	}
	for _, h := range ok {
		if err := Verify("s3cret", body, h); err != nil {
			t.Errorf("%v: %v", h, err)
		}
	}
	bad := map[string]http.Header{
		"missing signature":   {},
		"does not match":      {HeaderSignature256: {"sha256=" + strings.Repeat("0", 64)}},
		"malformed signature": {HeaderSignature256: {"sha256=" + sig[:10]}},
		"only sha256":         {HeaderSignature: {"sha1=" + sig[:40]}},
	}
	for want, h := range bad {
		if err := Verify("s3cret", body, h); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: want %q, got %v", h, want, err)
		}
	}
	// The 256 header wins over the legacy one.
	if err := Verify("s3cret", body, http.Header{HeaderSignature256: {"sha256=" + strings.Repeat("0", 64)}, HeaderSignature: {"sha256=" + sig}}); err == nil {
		t.Error("a wrong X-Hub-Signature-256 was overridden by X-Hub-Signature")
	}
	// Another secret, or a changed body, fails.
	if Verify("other", body, ok[0]) == nil || Verify("s3cret", append(body, ' '), ok[0]) == nil {
		t.Error("signature accepted for another secret or body")
	}
}
