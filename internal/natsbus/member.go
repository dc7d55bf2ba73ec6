package natsbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MemberKey is a process's key in a bucket of live members (writers,
// producers): its name made a valid key, and a random suffix, so two
// processes given one name still count as two.
func MemberKey(name string) string {
	clean := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '_'
	}, name)
	if clean == "" {
		clean = "member"
	}
	var b [4]byte
	rand.Read(b[:])
	return clean[:min(len(clean), 64)] + "." + hex.EncodeToString(b[:])
}

// Heartbeat puts key (with value) in kv every `every` until ctx ends, then
// deletes it, so that the others know at once that the member left. A put
// that fails (the bus away) is retried at the next beat; the key expires
// with the bucket's TTL if none succeeds meanwhile.
func Heartbeat(ctx context.Context, kv jetstream.KeyValue, key, value string, every time.Duration, log *slog.Logger) {
	defer func() {
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		kv.Delete(dctx, key)
	}()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		bctx, cancel := context.WithTimeout(ctx, every)
		_, err := kv.PutString(bctx, key, value)
		cancel()
		if err != nil && ctx.Err() == nil {
			log.Debug("heartbeat failed", "bucket", kv.Bucket(), "key", key, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}
