package natsbus

import "testing"

func TestStreamConfigs(t *testing.T) {
	cfgs := StreamConfigs(3)
	if len(cfgs) != 8 {
		t.Fatalf("%d streams", len(cfgs))
	}
	for _, c := range cfgs {
		if c.Replicas != 3 {
			t.Errorf("%s replicas %d", c.Name, c.Replicas)
		}
	}
	if got := StreamConfigs(0)[0].Replicas; got != 1 {
		t.Errorf("replicas below 1 give %d, want 1", got)
	}
	for _, b := range BucketConfigs(3) {
		if b.Replicas != 3 || b.Bucket == "" {
			t.Errorf("bucket %s replicas %d", b.Bucket, b.Replicas)
		}
	}
	if got := BucketConfigs(0)[0].Replicas; got != 1 {
		t.Errorf("bucket replicas below 1 give %d, want 1", got)
	}
}
