package errclass

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestOf(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("finalize run: table x: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want Class
	}{
		{"nil", nil, Unknown},
		{"plain", errors.New("something odd"), Unknown},
		{"deadline", wrap(context.DeadlineExceeded), Transient},
		{"file deadline", &fs.PathError{Op: "read", Path: "x", Err: os.ErrDeadlineExceeded}, Transient},
		{"bus timeout", wrap(nats.ErrTimeout), Transient},
		{"no responders", wrap(nats.ErrNoResponders), Transient},
		{"connection closed", wrap(nats.ErrConnectionClosed), Transient},
		{"no heartbeat", wrap(jetstream.ErrNoHeartbeat), Transient},
		{"no stream response", wrap(jetstream.ErrNoStreamResponse), Transient},
		{"leader election (503)", wrap(&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream cluster not available"}), Transient},
		{"refused (400)", wrap(&jetstream.APIError{Code: 400, ErrorCode: 10071, Description: "wrong last sequence"}), Deterministic},
		{"busy file", wrap(&fs.PathError{Op: "open", Path: "x", Err: syscall.EBUSY}), Transient},
		{"disk full", wrap(&fs.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}), Transient},
		{"lock contention", wrap(&fs.PathError{Op: "flock", Path: "x", Err: syscall.EAGAIN}), Transient},
		{"missing file", wrap(&fs.PathError{Op: "open", Path: "x", Err: syscall.ENOENT}), Deterministic},
		{"not exist sentinel", wrap(fs.ErrNotExist), Deterministic},
		{"permission", wrap(&fs.PathError{Op: "open", Path: "x", Err: syscall.EACCES}), Deterministic},
		{"network timeout", wrap(timeoutErr{}), Transient},
		{"malformed batch", wrap(schemas.ErrBadBatch), Deterministic},
		{"invalid name", wrap(fmt.Errorf("%w: table", schemas.ErrInvalidName)), Deterministic},
		{"outside the data dir", wrap(fmt.Errorf("%w: extracts/demo", schemas.ErrOutsideDataDir)), Deterministic},
		{"marked deterministic", wrap(MarkDeterministic(errors.New("Catalog Error: view exists"))), Deterministic},
		{"marked transient", MarkTransient(errors.New("IO Error: Could not set lock on file")), Transient},
		// The outermost mark wins over what it wraps.
		{"mark over rule", MarkDeterministic(wrap(nats.ErrTimeout)), Deterministic},
	} {
		if got := Of(tc.err); got != tc.want {
			t.Errorf("%s: Of(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
	if Mark(nil, Transient) != nil {
		t.Error("Mark(nil) is not nil")
	}
	err := MarkTransient(os.ErrClosed)
	if !errors.Is(err, os.ErrClosed) || err.Error() != os.ErrClosed.Error() {
		t.Errorf("a mark changes the error: %v", err)
	}
	if !IsTransient(nats.ErrTimeout) || IsTransient(schemas.ErrBadBatch) || !IsDeterministic(schemas.ErrBadBatch) {
		t.Error("IsTransient / IsDeterministic disagree with Of")
	}
}
