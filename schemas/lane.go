package schemas

import (
	"hash/fnv"
	"strconv"
	"strings"
	"time"
)

// Lanes spread the batches of a run over the writers in long runs of
// consecutive seqs, so that a writer's part holds a run the finalizer can
// join without decoding it, however many writers share the work.
//
// A producer cuts each table of a run into chunks of about a row group
// (LaneChunkRows rows) and publishes chunk c on lane (base + c) mod
// DataLanes, where base is a hash of the run and table: LaneSubject. Each
// lane has its own durable consumer (LaneConsumer), and the live writers
// share the lanes out among themselves (writer.lanes), so a chunk is read
// by one writer, in order, while the next chunk goes to the next writer.
// Batches of the stream run, and any batch published on the plain
// DataSubject, go to the shared WriterConsumer that every writer reads.
const DataLanes = 16

// WriterBucket holds one key per live writer, refreshed every
// WriterHeartbeat; a writer not heard from for WriterTTL is gone and its
// lanes go to the others.
const WriterBucket = "AGNES_WRITERS"

const (
	WriterHeartbeat = time.Second
	WriterTTL       = 3 * WriterHeartbeat
)

// LaneSubject is the subject of the data batches of table that travel on
// lane.
func LaneSubject(source, table string, lane int) string {
	return DataSubject(source, table) + "." + strconv.Itoa(lane)
}

// LaneFilter matches every batch on lane.
func LaneFilter(lane int) string { return "agnes.data.*.*." + strconv.Itoa(lane) }

// PlainDataFilter matches the batches published without a lane.
const PlainDataFilter = "agnes.data.*.*"

// LaneConsumer is the durable consumer of lane.
func LaneConsumer(lane int) string { return WriterConsumer + "-" + strconv.Itoa(lane) }

// WriterConsumers names every durable consumer of DataStream: the shared
// one, then one per lane.
func WriterConsumers() []string {
	names := []string{WriterConsumer}
	for i := range DataLanes {
		names = append(names, LaneConsumer(i))
	}
	return names
}

// Lane is the lane of chunk c of table in run.
func Lane(run, source, table string, chunk int64) int {
	h := fnv.New32a()
	h.Write([]byte(run + "\x00" + source + "\x00" + table))
	return int((uint64(h.Sum32()) + uint64(chunk)) % DataLanes)
}

// SubjectLane reads the lane of a batch of source.table from its subject:
// -1 for the plain DataSubject, ok false for any other subject.
func SubjectLane(subject, source, table string) (lane int, ok bool) {
	plain := DataSubject(source, table)
	if subject == plain {
		return -1, true
	}
	rest, found := strings.CutPrefix(subject, plain+".")
	if !found || rest == "" || len(rest) > 2 || strings.TrimLeft(rest, "0123456789") != "" || (len(rest) > 1 && rest[0] == '0') {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n >= DataLanes {
		return 0, false
	}
	return n, true
}
