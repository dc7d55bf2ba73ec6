package tests

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/agnes-ai/connector-kit/internal/config"
	"gopkg.in/yaml.v3"
)

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Deploy      struct {
			Replicas int `yaml:"replicas"`
		} `yaml:"deploy"`
		Healthcheck map[string]any `yaml:"healthcheck"`
	} `yaml:"services"`
}

// TestComposeFile checks the distributed shape without a Docker engine: NATS
// with JetStream, a producer, several writer replicas, a finalizer and the
// webhook gateway, each
// running a da command whose flags exist, with a config that loads.
func TestComposeFile(t *testing.T) {
	b, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	nats, ok := c.Services["nats"]
	if !ok || !slices.Contains(nats.Command, "--jetstream") || nats.Healthcheck == nil {
		t.Errorf("nats service must run JetStream with a health check: %+v", nats)
	}
	roles := map[string]string{"producer": "producer", "writer": "writer", "finalizer": "finalizer", "gateway": "gateway"}
	for svc, role := range roles {
		s, ok := c.Services[svc]
		if !ok {
			t.Errorf("service %s missing", svc)
			continue
		}
		cmd := strings.Join(s.Command, " ")
		if !strings.HasPrefix(cmd, "serve ") || !strings.Contains(cmd, "--role "+role) || !strings.Contains(cmd, "--config /etc/agnes/agnes.yaml") {
			t.Errorf("%s command %q", svc, cmd)
		}
		if s.Environment["NATS_URL"] != "nats://nats:4222" {
			t.Errorf("%s does not point at the nats service: %v", svc, s.Environment)
		}
		if !slices.Contains(s.Volumes, "data:/data") {
			t.Errorf("%s does not share the data volume: %v", svc, s.Volumes)
		}
		// Its health check asks its own /readyz, served with the metrics.
		test, _ := s.Healthcheck["test"].([]any)
		if !strings.Contains(cmd, "--metrics-listen 0.0.0.0:9090") || len(test) != 4 || test[1] != "da" || test[2] != "healthcheck" ||
			test[3] != "http://127.0.0.1:9090/readyz" {
			t.Errorf("%s: want --metrics-listen 0.0.0.0:9090 and the health check da healthcheck http://127.0.0.1:9090/readyz; command %q, healthcheck %v", svc, cmd, s.Healthcheck)
		}
	}
	if gw := strings.Join(c.Services["gateway"].Command, " "); !strings.Contains(gw, "--webhook-listen 0.0.0.0:8080") {
		t.Errorf("the gateway must listen on all interfaces inside its container: %q", gw)
	}
	if c.Services["writer"].Deploy.Replicas < 2 {
		t.Errorf("writers run %d replicas, want several", c.Services["writer"].Deploy.Replicas)
	}

	raw, err := os.ReadFile("../deploy/agnes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("deploy/agnes.yaml", raw)
	if err != nil {
		t.Fatalf("deploy/agnes.yaml: %v", err)
	}
	if cfg.DataDir != "/data" || cfg.NATS.URL != "nats://nats:4222" {
		t.Errorf("deploy config: data_dir %q, nats %q", cfg.DataDir, cfg.NATS.URL)
	}
	if _, err := cfg.Source("demo"); err != nil {
		t.Error(err)
	}
}
