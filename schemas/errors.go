package schemas

import "errors"

var (
	// ErrInvalidName marks a source, table, alias or extension name that does
	// not match the identifier rule.
	ErrInvalidName = errors.New("invalid name")
	// ErrOversized marks a batch that cannot be split under the bus payload
	// limit (a single row larger than the limit).
	ErrOversized = errors.New("batch exceeds the bus payload limit")
	// ErrBadBatch marks a data message that is not a valid Arrow IPC stream
	// with exactly one record batch, or lacks a required header.
	ErrBadBatch = errors.New("malformed batch")
	// ErrOutsideDataDir marks a path inside the data dir that a symbolic
	// link leads out of it.
	ErrOutsideDataDir = errors.New("path leaves the data dir")
	// ErrUnknownRun marks a batch of a run that was never started.
	ErrUnknownRun = errors.New("unknown run")
)

var (
	// ErrBadEvent marks an event that does not decode or whose fields are
	// malformed; it is skipped, never acted on.
	ErrBadEvent = errors.New("malformed event")
	// ErrBadRequest marks a sync request that does not decode or validate.
	ErrBadRequest = errors.New("malformed sync request")
)
