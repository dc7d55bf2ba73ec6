// Package writer turns Arrow IPC batches from the bus into Parquet part files.
// Any number of writers share the data stream's lanes (schemas.DataLanes,
// shared out in lanes.go) and its plain consumer; each buffers the batches
// it receives per table and lane, writes them as one zstd Parquet part (one
// row group) under the run's staging folder, announces the part with a
// batch_written event and only then acks the batches.
package writer

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/agnes-ai/connector-kit/internal/metrics"
	"github.com/agnes-ai/connector-kit/internal/natsbus"
	"github.com/agnes-ai/connector-kit/internal/parquetfile"
	"github.com/agnes-ai/connector-kit/schemas"
	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for batching: a part is written when it holds RowGroupRows rows,
// MaxBufferBytes bytes, or has waited FlushAfter, whichever comes first.
const (
	DefaultRowGroupRows   = parquetfile.DefaultRowGroupRows
	DefaultMaxBufferBytes = 64 << 20
	DefaultMaxHeldBytes   = 128 << 20
	DefaultMaxOpenLanes   = 2
	DefaultFlushAfter     = 500 * time.Millisecond
	// DefaultStreamFlushAfter is how long streamed (webhook) batches wait to
	// be joined into one part: the floor of an event's time to visibility.
	DefaultStreamFlushAfter = 100 * time.Millisecond
	DefaultPrefetch         = 8
	DefaultAckWait          = 60 * time.Second
	DefaultMaxDeliver       = 10
	// DefaultMaxBatchBytes is the largest decoded batch a writer accepts.
	DefaultMaxBatchBytes = 256 << 20
)

// Options configure a Writer.
type Options struct {
	JS      jetstream.JetStream
	DataDir string
	// Name identifies this writer in events and logs.
	Name           string
	RowGroupRows   int64
	MaxBufferBytes int64
	// MaxHeldBytes bounds the bytes buffered over all tables; past it the
	// largest buffer is written.
	MaxHeldBytes int64
	// MaxOpenLanes is how many lanes may have a part in the making before a
	// batch that would start one on another lane waits (gate).
	MaxOpenLanes int
	FlushAfter   time.Duration
	// StreamFlushAfter replaces FlushAfter for batches of the stream run.
	StreamFlushAfter time.Duration
	// Prefetch is how many batches are pulled ahead of the one being handled.
	Prefetch      int
	AckWait       time.Duration
	MaxDeliver    int
	MaxBatchBytes int64
	Mem           memory.Allocator
	Logger        *slog.Logger

	// beforeWrite, when set, runs before a part is written (tests slow
	// writes down with it).
	beforeWrite func()
}

// Writer consumes data batches and writes Parquet parts.
type Writer struct {
	opts   Options
	layout schemas.Layout
	log    *slog.Logger
	// mu serialises the handling of batches from the lanes' consumers.
	mu      sync.Mutex
	buffers map[bufferKey]*buffer
	// held is the bytes of the batches in buffers.
	held int64
	// lanes is the lanes the writer reads (Lanes).
	lanes atomic.Pointer[[]int]
	// open counts the buffers open per lane; laneClosed is closed (and
	// replaced) when a lane's last one is written (gate).
	open       map[int]int
	laneClosed chan struct{}
	// events is the run event stream, looked up on first use; known holds
	// the runs whose run_started event it holds.
	events jetstream.Stream
	known  map[runKey]bool
	// Stats, read by tests and the bench after Run returns.
	Parts   int64
	Batches int64
	Rows    int64
	// PeakOpenLanes is the most lanes that had a part in the making at once.
	PeakOpenLanes int
}

type bufferKey struct {
	run, source, table string
	attempt            int
	// month is the partition of a partitioned table's rows.
	month string
	// lane is the lane the batches came on (-1: none). A table's chunks
	// on other lanes are other runs of seqs, and other parts.
	lane int
}

type runKey struct{ source, run string }

// maxKnownRuns bounds the runs a writer remembers as started; past it the
// memory is cleared and runs are looked up again.
const maxKnownRuns = 4096

type entry struct {
	ref schemas.BatchRef
	rec arrow.RecordBatch
	msg jetstream.Msg
}

type buffer struct {
	key     bufferKey
	keyCol  string
	schema  *arrow.Schema
	entries []entry
	rows    int64
	bytes   int64
	since   time.Time
	// first, last: the run of seqs the part holds, unless mixed.
	first, last int64
	mixed       bool
}

// takes reports whether batch seq may join b's part. A batch table's part
// is cut where its seqs stop being consecutive, so that the finalizer can
// join the parts, in order, without decoding them (finalizer.assemble); a
// copy of a seq the part holds joins it (flush drops it). On a lane a chunk
// comes to one writer, so a gap is a late redelivery (a lane changing
// hands) and is always cut. Off the lanes, a run shorter than minRun is not
// cut: several writers keeping up with one table take its batches in turn,
// and cutting would make a part, and a row group, of each batch; such a
// part mixes seqs and the finalizer re-encodes the table. A partition's
// parts (a month's rows come from any batch) and streamed parts are placed
// whole and are never cut.
func (b *buffer) takes(seq, minRun int64) bool {
	if b.key.run == schemas.StreamRun || b.key.month != "" || b.mixed || (seq >= b.first && seq <= b.last+1) {
		return true
	}
	if b.rows < minRun && b.key.lane < 0 {
		b.mixed = true
		return true
	}
	return false
}

// Validate reports options a writer cannot run with.
func (o Options) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("no JetStream client"))
	}
	if o.DataDir == "" {
		errs = append(errs, errors.New("no data dir"))
	}
	if o.RowGroupRows < 0 || o.MaxBufferBytes < 0 || o.MaxHeldBytes < 0 || o.MaxOpenLanes < 0 || o.Prefetch < 0 || o.MaxDeliver < 0 || o.MaxBatchBytes < 0 ||
		o.AckWait < 0 || o.FlushAfter < 0 || o.StreamFlushAfter < 0 {
		errs = append(errs, errors.New("negative size, count or duration"))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("writer options: %w", err)
	}
	return nil
}

// New returns a Writer; Run starts it.
func New(opts Options) *Writer {
	if opts.RowGroupRows <= 0 {
		opts.RowGroupRows = DefaultRowGroupRows
	}
	if opts.MaxBufferBytes <= 0 {
		opts.MaxBufferBytes = DefaultMaxBufferBytes
	}
	if opts.MaxHeldBytes <= 0 {
		opts.MaxHeldBytes = max(DefaultMaxHeldBytes, opts.MaxBufferBytes)
	}
	if opts.MaxOpenLanes <= 0 {
		opts.MaxOpenLanes = DefaultMaxOpenLanes
	}
	if opts.FlushAfter <= 0 {
		opts.FlushAfter = DefaultFlushAfter
	}
	if opts.StreamFlushAfter <= 0 {
		opts.StreamFlushAfter = DefaultStreamFlushAfter
	}
	if opts.Prefetch <= 0 {
		opts.Prefetch = DefaultPrefetch
	}
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.MaxDeliver <= 0 {
		opts.MaxDeliver = DefaultMaxDeliver
	}
	if opts.MaxBatchBytes <= 0 {
		opts.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if opts.Mem == nil {
		opts.Mem = memory.DefaultAllocator
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Name == "" {
		h, _ := os.Hostname()
		opts.Name = fmt.Sprintf("%s-%d", h, os.Getpid())
	}
	layout, err := schemas.NewLayout(opts.DataDir)
	if err != nil {
		// Abs fails only when the working directory is gone; the relative
		// path then still names the same folder for this process.
		layout = schemas.LayoutAt(opts.DataDir)
	}
	return &Writer{opts: opts, layout: layout, log: opts.Logger.With("service", "writer", "writer", opts.Name), buffers: map[bufferKey]*buffer{},
		known: map[runKey]bool{}, open: map[int]int{}, laneClosed: make(chan struct{})}
}

// Run consumes batches until ctx ends. On return every buffered batch has
// been written and acked, or left unacked for redelivery.
func (w *Writer) Run(ctx context.Context) error {
	if err := w.opts.Validate(); err != nil {
		return err
	}
	plain, laneCons, err := w.consumers(ctx)
	var kv jetstream.KeyValue
	if err == nil {
		kv, err = natsbus.KeyValue(ctx, w.opts.JS, schemas.WriterBucket)
	}
	if err != nil {
		if ctx.Err() != nil {
			// Stopped while starting: nothing was taken.
			w.log.Info("writer stopped", "parts", 0, "batches", 0, "rows", 0)
			return nil
		}
		return err
	}
	w.log.Info("writer started")
	defer w.release()
	l := &lanes{w: w, ctx: ctx, kv: kv, key: natsbus.MemberKey(w.opts.Name), cons: laneCons, seen: map[string]time.Time{}, running: map[int]context.CancelFunc{}}
	// Batches on plain subjects (the stream run's) go to every writer.
	l.consume(ctx, plain, schemas.WriterConsumer, -1, w.opts.Prefetch)
	l.run(ctx)
	// Flush what is buffered so it is not redelivered needlessly.
	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	w.mu.Lock()
	w.flushAll(fctx)
	w.mu.Unlock()
	cancel()
	w.log.Info("writer stopped", "parts", w.Parts, "batches", w.Batches, "rows", w.Rows)
	return nil
}

// The consumers of the lanes a writer reads run side by side; one batch is
// handled at a time (handleLane).
func (w *Writer) flushDueLocked(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushDue(ctx)
}

func (w *Writer) fetchWaitLocked() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.fetchWait()
}

func (w *Writer) exhaustedLocked(ctx context.Context, msg jetstream.Msg, cause error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.exhausted(ctx, msg, cause)
}

func (w *Writer) release() {
	for k, b := range w.buffers {
		for _, e := range b.entries {
			e.rec.Release()
		}
		delete(w.buffers, k)
	}
}

func (w *Writer) handle(ctx context.Context, msg jetstream.Msg) {
	ref, err := schemas.ParseDataHeader(msg.Headers())
	if err != nil {
		w.poison(ctx, msg, ref, err)
		return
	}
	// The subject is what the stream's limits and the permissions act on;
	// a batch whose headers name another table is forged or misrouted.
	lane, ok := schemas.SubjectLane(msg.Subject(), ref.Source, ref.Table)
	if want := schemas.DataSubject(ref.Source, ref.Table); !ok {
		w.poison(ctx, msg, ref, fmt.Errorf("%w: published on %s, but its headers name table %s.%s (subject %s)",
			schemas.ErrBadBatch, schemas.Clip(msg.Subject()), ref.Source, ref.Table, want))
		return
	}
	if n := int64(len(msg.Data())); n > w.opts.MaxBatchBytes {
		w.poison(ctx, msg, ref, fmt.Errorf("%w: %d bytes, the writer's limit is %d", schemas.ErrOversized, n, w.opts.MaxBatchBytes))
		return
	}
	rec, err := schemas.DecodeBatch(msg.Data(), w.opts.Mem)
	if err != nil {
		w.poison(ctx, msg, ref, err)
		return
	}
	if rec.NumRows() != ref.Rows {
		rec.Release()
		w.poison(ctx, msg, ref, fmt.Errorf("%w: header says %d rows, batch holds %d", schemas.ErrBadBatch, ref.Rows, rec.NumRows()))
		return
	}
	if n := recordBytes(rec); n > w.opts.MaxBatchBytes {
		rec.Release()
		w.poison(ctx, msg, ref, fmt.Errorf("%w: decodes to %d bytes, the writer's limit is %d", schemas.ErrOversized, n, w.opts.MaxBatchBytes))
		return
	}
	if fp := msg.Headers().Get(schemas.HeaderSchema); fp != schemas.Fingerprint(rec.Schema()) {
		got := rec.Schema().String()
		rec.Release()
		w.poison(ctx, msg, ref, fmt.Errorf("%w: batch schema does not match the table's declared schema: %s", schemas.ErrBadBatch, got))
		return
	}
	month, keyCol, err := partitionHeaders(msg, rec)
	if err != nil {
		rec.Release()
		w.poison(ctx, msg, ref, err)
		return
	}
	key := bufferKey{ref.Run, ref.Source, ref.Table, ref.Attempt, month, lane}
	b := w.buffers[key]
	if b == nil && !w.admit(ctx, msg, ref) {
		rec.Release()
		return
	}
	if b != nil && (!b.schema.Equal(rec.Schema()) || !b.takes(ref.Seq, w.opts.RowGroupRows/4)) {
		// A part holds one schema (the finalizer checks parts against the
		// table's declared one) and a run of consecutive seqs.
		w.flush(ctx, b)
		b = nil
	}
	if b == nil {
		b = &buffer{key: key, keyCol: keyCol, schema: rec.Schema(), since: time.Now(), first: ref.Seq, last: ref.Seq - 1}
		w.buffers[key] = b
		w.opened(key.lane)
	}
	b.entries = append(b.entries, entry{ref: ref, rec: rec, msg: msg})
	b.last = max(b.last, ref.Seq)
	b.rows += rec.NumRows()
	n := recordBytes(rec)
	b.bytes += n
	w.held += n
	if b.rows >= w.opts.RowGroupRows || b.bytes >= w.opts.MaxBufferBytes {
		w.flush(ctx, b)
	}
	w.bound(ctx)
}

// bound writes the largest buffers while the writer holds more than
// MaxHeldBytes, so its memory does not grow with the number of tables and
// lanes it reads.
func (w *Writer) bound(ctx context.Context) {
	for w.held > w.opts.MaxHeldBytes && len(w.buffers) > 0 {
		var big *buffer
		for _, b := range w.buffers {
			if big == nil || b.bytes > big.bytes {
				big = b
			}
		}
		w.flush(ctx, big)
	}
}

// partitionHeaders reads the partition month and key column of a batch of a
// partitioned table (both empty for other tables).
func partitionHeaders(msg jetstream.Msg, rec arrow.RecordBatch) (month, keyCol string, err error) {
	month, keyCol = msg.Headers().Get(schemas.HeaderMonth), msg.Headers().Get(schemas.HeaderKeyColumn)
	if month == "" && keyCol == "" {
		return "", "", nil
	}
	if err := schemas.ValidateMonth(month); err != nil {
		return "", "", fmt.Errorf("%w: header %s: %v", schemas.ErrBadBatch, schemas.HeaderMonth, err)
	}
	if err := schemas.ValidateName("key column", keyCol); err != nil {
		return "", "", fmt.Errorf("%w: header %s: %v", schemas.ErrBadBatch, schemas.HeaderKeyColumn, err)
	}
	if err := schemas.CheckStored(rec.Schema(), keyCol); err != nil {
		return "", "", fmt.Errorf("%w: %v", schemas.ErrBadBatch, err)
	}
	return month, keyCol, nil
}

// exhausted dead-letters a batch delivered more often than MaxDeliver
// without being settled (writers stopped or died holding it each time).
func (w *Writer) exhausted(ctx context.Context, msg jetstream.Msg, cause error) {
	ref, _ := schemas.ParseDataHeader(msg.Headers())
	w.poison(ctx, msg, ref, cause)
}

// admit reports whether a batch may open a buffer: staging is made only
// for runs that exist (a producer announces run_started, with confirmation,
// before it publishes a batch). A batch of a run that was never started is
// dead-lettered; one whose run cannot be looked up is handed back.
func (w *Writer) admit(ctx context.Context, msg jetstream.Msg, ref schemas.BatchRef) bool {
	ok, err := w.started(ctx, ref.Source, ref.Run)
	if err != nil {
		w.log.Warn("look up the batch's run; will retry", "run", schemas.Clip(ref.Run), "source", ref.Source, "err", err)
		natsbus.Settle(w.log, "nak", msg.NakWithDelay(redeliveryDelay(msg)))
		return false
	}
	if !ok {
		w.deadLetter(ctx, msg, ref, fmt.Errorf("%w: run %s of source %s was never started (no run_started event): forged, or its events expired",
			schemas.ErrUnknownRun, ref.Run, ref.Source), false)
	}
	return ok
}

// started reports whether run of source exists: its run_started event is
// on the bus. The stream run always exists.
func (w *Writer) started(ctx context.Context, source, run string) (bool, error) {
	k := runKey{source, run}
	if run == schemas.StreamRun || w.known[k] {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if w.events == nil {
		s, err := w.opts.JS.Stream(ctx, schemas.EventStream)
		if err != nil {
			return false, err
		}
		w.events = s
	}
	_, err := w.events.GetLastMsgForSubject(ctx, schemas.EventSubject(source, run, schemas.EventRunStarted))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if len(w.known) >= maxKnownRuns {
		clear(w.known)
	}
	w.known[k] = true
	return true, nil
}

// poison moves a message that can never be written to the dead-letter
// stream with the reason, reports it so the finalizer fails the table instead
// of waiting for the batch, and terminates it. If the dead letter cannot be
// stored, the message is left for redelivery.
func (w *Writer) poison(ctx context.Context, msg jetstream.Msg, ref schemas.BatchRef, cause error) {
	w.deadLetter(ctx, msg, ref, cause, true)
}

// deadLetter is poison; report says whether the run is told (a batch of a
// run that does not exist has no one to tell).
func (w *Writer) deadLetter(ctx context.Context, msg jetstream.Msg, ref schemas.BatchRef, cause error, report bool) {
	w.log.Error("dead-lettering bad batch", "subject", schemas.Clip(msg.Subject()), "run", schemas.Clip(ref.Run), "table", schemas.Clip(ref.Table),
		"seq", ref.Seq, "err", cause)
	source, table := ref.Source, ref.Table
	if schemas.ValidateName("source", source) != nil || schemas.ValidateName("table", table) != nil {
		source, table = "_unknown", "_unknown"
	}
	dl := natsbus.DeadLetter(msg, source, table, cause)
	dl.Header.Set(schemas.HeaderDLQWriter, w.opts.Name)
	// The batch_failed report comes first: once the dead letter is stored
	// the message is terminated, and the finalizer must not wait for it.
	if report && schemas.ValidateRunID(ref.Run) == nil && schemas.ValidateName("source", ref.Source) == nil && schemas.ValidateName("table", ref.Table) == nil {
		ev := schemas.Event{Type: schemas.EventBatchFailed, RunID: ref.Run, Source: ref.Source, Table: ref.Table,
			Attempt: ref.Attempt, Seq: ref.Seq, Writer: w.opts.Name, Error: cause.Error()}
		if err := natsbus.PublishEvent(ctx, w.opts.JS, ev); err != nil {
			w.log.Error("report bad batch; leaving it for redelivery", "err", err)
			natsbus.Settle(w.log, "nak", msg.NakWithDelay(redeliveryDelay(msg)))
			return
		}
	}
	natsbus.Bury(ctx, w.opts.JS, w.log, msg, dl, redeliveryDelay(msg))
}

func (w *Writer) flushDue(ctx context.Context) {
	for _, b := range w.buffers {
		if time.Since(b.since) >= w.flushAfter(b) {
			w.flush(ctx, b)
		}
	}
}

func (w *Writer) flushAfter(b *buffer) time.Duration {
	if b.key.run == schemas.StreamRun {
		return w.opts.StreamFlushAfter
	}
	return w.opts.FlushAfter
}

// fetchWait is how long the next fetch may wait: at most the stream flush
// interval (a streamed batch arriving during an idle fetch is not held
// longer), less when a buffer is due sooner.
func (w *Writer) fetchWait() time.Duration {
	wait := min(w.opts.FlushAfter/2, w.opts.StreamFlushAfter)
	for _, b := range w.buffers {
		wait = min(wait, w.flushAfter(b)-time.Since(b.since))
	}
	return max(wait, 5*time.Millisecond)
}

func (w *Writer) flushAll(ctx context.Context) {
	for _, b := range w.buffers {
		w.flush(ctx, b)
	}
}

// flush writes b as one part, announces it, then acks its messages. On
// failure the messages are nak'ed for redelivery.
func (w *Writer) flush(ctx context.Context, b *buffer) {
	delete(w.buffers, b.key)
	w.closed(b.key.lane)
	w.held -= b.bytes
	defer func() {
		for _, e := range b.entries {
			e.rec.Release()
		}
	}()
	// Part contents are ordered by seq and free of duplicate seqs, so the same
	// set of batches always gives the same file under the same name.
	slices.SortFunc(b.entries, func(x, y entry) int { return cmp.Compare(x.ref.Seq, y.ref.Seq) })
	uniq := b.entries[:0:0]
	var dups []jetstream.Msg
	for _, e := range b.entries {
		if n := len(uniq); n > 0 && uniq[n-1].ref.Seq == e.ref.Seq {
			dups = append(dups, e.msg)
			e.rec.Release()
			continue
		}
		uniq = append(uniq, e)
	}
	b.entries = uniq
	b.rows = 0
	for _, e := range uniq {
		b.rows += e.rec.NumRows()
	}
	// Tell the server the batches are being worked on, so a write slower
	// than the ack wait is not redelivered to another writer.
	start := time.Now()
	msgs := make([]jetstream.Msg, 0, len(b.entries)+len(dups))
	for _, e := range b.entries {
		msgs = append(msgs, e.msg)
	}
	stop := natsbus.KeepAlive(ctx, w.opts.AckWait/3, append(msgs, dups...), nil)
	if w.opts.beforeWrite != nil {
		w.opts.beforeWrite()
	}
	ev, err := w.writePart(b)
	if err == nil {
		err = natsbus.PublishEvent(ctx, w.opts.JS, ev)
	}
	stop()
	if err != nil {
		metrics.WriteFailures.WithLabelValues(metrics.Source(b.key.source)).Inc()
		w.log.Error("write part failed; batches will be redelivered", "run", b.key.run, "table", b.key.table, "err", err)
		// A path the layout refuses (a link leading out of the data dir) is
		// refused on every delivery and by every writer sharing the dir.
		refused := errors.Is(err, schemas.ErrOutsideDataDir)
		for _, e := range b.entries {
			if refused {
				w.poison(ctx, e.msg, e.ref, err)
				continue
			}
			if md, merr := e.msg.Metadata(); merr == nil && md.NumDelivered >= uint64(w.opts.MaxDeliver) {
				w.poison(ctx, e.msg, e.ref, fmt.Errorf("failed %d deliveries, last error: %w", md.NumDelivered, err))
				continue
			}
			natsbus.Settle(w.log, "nak", e.msg.NakWithDelay(redeliveryDelay(e.msg)))
		}
		for _, m := range dups {
			natsbus.Settle(w.log, "nak", m.NakWithDelay(redeliveryDelay(m)))
		}
		return
	}
	for _, m := range msgs {
		natsbus.Settle(w.log, "ack", m.Ack())
	}
	for _, m := range dups {
		natsbus.Settle(w.log, "ack", m.Ack())
	}
	w.Parts++
	w.Batches += int64(len(b.entries))
	w.Rows += b.rows
	metrics.PartSeconds.Observe(time.Since(start).Seconds())
	countPart(b.key.source, len(b.entries), b.rows)
	w.log.Debug("part written", "run", b.key.run, "table", b.key.table, "part", ev.Part, "batches", len(b.entries), "rows", ev.Rows)
}

// countPart counts a written part of source in the metrics.
func countPart(source string, batches int, rows int64) {
	label := metrics.Source(source)
	metrics.PartsWritten.WithLabelValues(label).Inc()
	metrics.BatchesWritten.WithLabelValues(label).Add(float64(batches))
	metrics.RowsWritten.WithLabelValues(label).Add(float64(rows))
}

func (w *Writer) writePart(b *buffer) (schemas.Event, error) {
	seqs := make([]int64, len(b.entries))
	counts := make([]int64, len(b.entries))
	var meta strings.Builder
	h := sha256.New()
	var rows int64
	for i, e := range b.entries {
		seqs[i], counts[i] = e.ref.Seq, e.rec.NumRows()
		rows += counts[i]
		if i > 0 {
			meta.WriteByte(',')
		}
		fmt.Fprintf(&meta, "%d:%d", seqs[i], counts[i])
	}
	h.Write([]byte(meta.String()))
	pn := schemas.PartName{Month: b.key.month, Attempt: b.key.attempt, First: seqs[0], Last: seqs[len(seqs)-1],
		Hash: hex.EncodeToString(h.Sum(nil))[:12]}
	name := pn.String()
	// The key holds values ParseDataHeader validated; the layout checks again.
	path, err := w.layout.Part(b.key.source, b.key.run, b.key.table, pn)
	if err != nil {
		return schemas.Event{}, err
	}
	md := map[string]string{schemas.SeqsMetaKey: meta.String()}
	if b.keyCol != "" {
		md[schemas.KeyColumnMetaKey] = b.keyCol
	}
	pf, err := parquetfile.Create(path, b.schema, max(w.opts.RowGroupRows, rows), md, w.opts.Mem)
	if err != nil {
		return schemas.Event{}, err
	}
	for _, e := range b.entries {
		if err := pf.Write(e.rec); err != nil {
			pf.Abort()
			return schemas.Event{}, err
		}
	}
	if _, err := pf.Commit(); err != nil {
		return schemas.Event{}, err
	}
	ev := schemas.Event{Type: schemas.EventBatchWritten, RunID: b.key.run, Source: b.key.source, Table: b.key.table,
		Attempt: b.key.attempt, Part: name, Seqs: seqs, SeqRows: counts, Rows: rows, Writer: w.opts.Name, Month: b.key.month}
	if b.keyCol != "" {
		ev.PrimaryKey = []string{b.keyCol}
	}
	return ev, nil
}

// recordBytes is the memory held by rec's buffers.
func recordBytes(rec arrow.RecordBatch) int64 {
	var n int64
	var add func(d arrow.ArrayData)
	add = func(d arrow.ArrayData) {
		for _, b := range d.Buffers() {
			if b != nil {
				n += int64(b.Len())
			}
		}
		for _, c := range d.Children() {
			add(c)
		}
	}
	for _, c := range rec.Columns() {
		add(c.Data())
	}
	return n
}

// redeliveryDelay backs off exponentially with the delivery count, from
// 250ms to 30s.
func redeliveryDelay(m jetstream.Msg) time.Duration {
	n := uint64(1)
	if md, err := m.Metadata(); err == nil {
		n = md.NumDelivered
	}
	return backoff(n)
}

// redelivery is the writer's backoff for batches it could not write.
var redelivery = natsbus.Backoff{Min: 250 * time.Millisecond, Max: 30 * time.Second}

// backoff is the delay before the next delivery after the n-th one failed.
func backoff(n uint64) time.Duration { return redelivery.After(n) }
