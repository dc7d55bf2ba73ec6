package httpapi

import (
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Failed authentication is throttled per client address: each refused
// token spends one of FailBurst tries, given back at one per FailEvery;
// an address with none left gets 429 and Retry-After, without its token
// being looked at, until it has one again.
const (
	FailBurst = 10
	FailEvery = 6 * time.Second
	// maxTracked bounds the addresses remembered; past it the oldest
	// state is dropped (a flood of addresses cannot grow memory).
	maxTracked = 10_000
)

// throttle keeps a limiter per address that failed authentication.
type throttle struct {
	mu sync.Mutex
	by map[string]*rate.Limiter
}

// blocked says how long ip must wait before trying again (0: it may).
func (t *throttle) blocked(ip string, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	l := t.by[ip]
	if l == nil || l.TokensAt(now) >= 1 {
		return 0
	}
	wait := time.Duration(math.Ceil((1 - l.TokensAt(now)) * float64(FailEvery)))
	return max(wait, time.Second)
}

// failed spends one of ip's tries.
func (t *throttle) failed(ip string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.by == nil || len(t.by) >= maxTracked {
		t.by = map[string]*rate.Limiter{}
	}
	l := t.by[ip]
	if l == nil {
		l = rate.NewLimiter(rate.Every(FailEvery), FailBurst)
		t.by[ip] = l
	}
	l.AllowN(now, 1)
}

func tooMany(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
	fail(w, http.StatusTooManyRequests, "too many failed authentications from this address; retry in %s", wait.Round(time.Second))
}
