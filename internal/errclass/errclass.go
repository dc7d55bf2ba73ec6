// Package errclass is the one place that decides whether an error may go
// away on its own. Transient errors (the bus unavailable or electing a
// leader, a busy or locked file, a timeout, a full disk) are worth a retry
// with backoff; deterministic ones (SQL errors from names or types, schema
// violations, malformed files, a missing file, a refused permission) repeat
// on every try, so whatever hit one fails at once with its message.
//
// Code that knows better marks its errors (Transient, Deterministic); the
// mark wins over everything else. Errors no rule recognizes are Unknown:
// each caller says what Unknown means for it (a whole finalization retries
// it within its budget; one table's step fails that table alone).
package errclass

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"

	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Class is what retrying an error can achieve.
type Class int

const (
	// Unknown: no rule recognizes the error.
	Unknown Class = iota
	// Transient: a later try may succeed.
	Transient
	// Deterministic: every try fails the same way.
	Deterministic
)

func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Deterministic:
		return "deterministic"
	}
	return "unknown"
}

// marked is an error its maker classified.
type marked struct {
	err   error
	class Class
}

func (m *marked) Error() string { return m.err.Error() }
func (m *marked) Unwrap() error { return m.err }

// Mark returns err classified as c (nil stays nil).
func Mark(err error, c Class) error {
	if err == nil {
		return nil
	}
	return &marked{err: err, class: c}
}

// MarkTransient marks err as worth a retry.
func MarkTransient(err error) error { return Mark(err, Transient) }

// MarkDeterministic marks err as failing the same way on every try.
func MarkDeterministic(err error) error { return Mark(err, Deterministic) }

// Of classifies err: the outermost mark, else the first rule that matches.
func Of(err error) Class {
	if err == nil {
		return Unknown
	}
	var m *marked
	if errors.As(err, &m) {
		return m.class
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return Transient
	case errors.Is(err, schemas.ErrBadBatch), errors.Is(err, schemas.ErrInvalidName), errors.Is(err, schemas.ErrBadEvent),
		errors.Is(err, schemas.ErrBadRequest), errors.Is(err, schemas.ErrOversized),
		errors.Is(err, schemas.ErrOutsideDataDir), errors.Is(err, schemas.ErrUnknownRun):
		return Deterministic
	}
	if c := bus(err); c != Unknown {
		return c
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return ofErrno(errno)
	}
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, os.ErrPermission) {
		return Deterministic
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return Transient
	}
	return Unknown
}

// IsTransient reports whether err is known to be worth a retry.
func IsTransient(err error) bool { return Of(err) == Transient }

// IsDeterministic reports whether err is known to repeat on every try.
func IsDeterministic(err error) bool { return Of(err) == Deterministic }

// bus classifies NATS and JetStream errors: the connection or a leader
// missing is transient; a refused request (4xx) other than a timeout or
// a rate limit is deterministic.
func bus(err error) Class {
	for _, t := range []error{nats.ErrTimeout, nats.ErrNoResponders, nats.ErrConnectionClosed, nats.ErrConnectionDraining,
		nats.ErrConnectionReconnecting, nats.ErrDisconnected, nats.ErrStaleConnection, nats.ErrNoServers,
		jetstream.ErrNoHeartbeat, jetstream.ErrNoStreamResponse, jetstream.ErrJetStreamNotEnabled, jetstream.ErrJetStreamNotEnabledForAccount,
		jetstream.ErrJetStreamPublisherClosed, jetstream.ErrAsyncPublishTimeout, jetstream.ErrTooManyStalledMsgs} {
		if errors.Is(err, t) {
			return Transient
		}
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		switch {
		case api.Code >= 500, api.Code == 408, api.Code == 429:
			return Transient
		case api.Code >= 400:
			return Deterministic
		}
	}
	return Unknown
}

// ofErrno classifies an operating system error.
func ofErrno(e syscall.Errno) Class {
	switch e {
	case syscall.EBUSY, syscall.EAGAIN, syscall.EINTR, syscall.ETXTBSY, syscall.EMFILE, syscall.ENFILE, syscall.ENOSPC,
		syscall.EIO, syscall.ENOMEM, syscall.ETIMEDOUT, syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EPIPE, syscall.ENOLCK,
		syscall.EDEADLK:
		return Transient
	case syscall.ENOENT, syscall.EACCES, syscall.EPERM, syscall.EROFS, syscall.ENAMETOOLONG, syscall.EISDIR, syscall.ENOTDIR,
		syscall.EINVAL, syscall.EEXIST, syscall.ENOTEMPTY, syscall.EXDEV, syscall.ELOOP, syscall.EBADF:
		return Deterministic
	}
	return Unknown
}
