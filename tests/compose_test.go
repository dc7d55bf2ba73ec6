package tests

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"

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
		Ports       []string       `yaml:"ports"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
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
	checkComposeAuth(t, c)
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

// checkComposeAuth checks the authenticated bus of the compose file: NATS
// is not published, runs the config "da nats config" writes, and every
// service mounts only its own role's seed and names it in DA_NATS_CREDS;
// provision creates the streams as admin before the services start.
func checkComposeAuth(t *testing.T, c composeFile) {
	t.Helper()
	nats, init := c.Services["nats"], c.Services["nats-init"]
	if len(nats.Ports) != 0 {
		t.Errorf("nats publishes %v beyond the compose network", nats.Ports)
	}
	initCmd := strings.Join(init.Command, " ")
	if !strings.HasPrefix(initCmd, "nats config --creds-dir /creds --role-dirs --out /nats-conf/nats.conf") ||
		!slices.Contains(init.Volumes, "nats-conf:/nats-conf") {
		t.Errorf("nats-init must write the server config to the nats-conf volume: %q %v", initCmd, init.Volumes)
	}
	if i := slices.Index(nats.Command, "-c"); i < 0 || i+1 >= len(nats.Command) || nats.Command[i+1] != "/etc/agnes-nats/nats.conf" ||
		!slices.Contains(nats.Volumes, "nats-conf:/etc/agnes-nats:ro") || nats.DependsOn["nats-init"].Condition != "service_completed_successfully" {
		t.Errorf("nats must run the config nats-init made: %v %v %v", nats.Command, nats.Volumes, nats.DependsOn)
	}
	roles := map[string]string{"producer": "producer", "writer": "writer", "finalizer": "finalizer", "gateway": "gateway", "cli": "cli", "api": "api", "provision": "admin", "admin": "admin"}
	for svc, role := range roles {
		s := c.Services[svc]
		if !slices.Contains(init.Volumes, "creds-"+role+":/creds/"+role) {
			t.Errorf("nats-init does not make %s's seed in its volume: %v", role, init.Volumes)
		}
		if s.Environment["DA_NATS_CREDS"] != "/run/agnes/"+role+".nk" || !slices.Contains(s.Volumes, "creds-"+role+":/run/agnes:ro") {
			t.Errorf("%s must use the %s identity from its own volume: env %v, volumes %v", svc, role, s.Environment, s.Volumes)
		}
		for _, v := range s.Volumes {
			if strings.HasPrefix(v, "creds-") && v != "creds-"+role+":/run/agnes:ro" {
				t.Errorf("%s mounts another role's seed: %s", svc, v)
			}
		}
		if svc != "provision" && s.DependsOn["provision"].Condition != "service_completed_successfully" {
			t.Errorf("%s starts before provision: %v", svc, s.DependsOn)
		}
	}
	if p := strings.Join(c.Services["provision"].Command, " "); !strings.HasPrefix(p, "nats provision --config /etc/agnes/agnes.yaml") ||
		c.Services["provision"].DependsOn["nats"].Condition != "service_healthy" {
		t.Errorf("provision: %q %v", p, c.Services["provision"].DependsOn)
	}
	// The image owns the folders the volumes are first mounted on.
	df, err := os.ReadFile("../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"/data", "/nats-conf", "/creds/admin", "/creds/producer", "/creds/writer", "/creds/finalizer", "/creds/gateway", "/creds/cli", "/creds/api"} {
		if !strings.Contains(string(df), " "+dir+" ") {
			t.Errorf("deploy/Dockerfile does not make %s for the image's user", dir)
		}
	}
}

// TestComposeSpec loads docker-compose.yml with compose-go, the loader
// docker compose itself uses: the file must pass the Compose
// specification's JSON Schema (embedded in compose-go, pinned in go.sum)
// and its semantic checks; then the invariants of a file that runs:
// images pinned to an exact version, NATS and the metrics not published,
// the sync API and the gateway published only where meant, every service
// with a health check or a one-shot, and writers told apart by name.
func TestComposeSpec(t *testing.T) {
	ctx := context.Background()
	p, err := loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  "..",
		ConfigFiles: []types.ConfigFile{{Filename: "../docker-compose.yml"}},
		Environment: types.Mapping{},
	}, func(o *loader.Options) { o.SetProjectName("agnes", true); o.Profiles = []string{"*"} })
	if err != nil {
		t.Fatalf("docker-compose.yml does not load as the Compose specification says: %v", err)
	}
	// An exact version (Debian's are its point releases, 12.12) or a digest.
	pinned := regexp.MustCompile(`(:[0-9]+\.[0-9]+\.[0-9]+(-[a-z0-9.]+)?|@sha256:[0-9a-f]{64}|^debian:[0-9]+\.[0-9]+(-slim)?)$`)
	for name, s := range p.Services {
		if s.Build == nil && !pinned.MatchString(s.Image) {
			t.Errorf("%s: image %q is not pinned to an exact version or digest", name, s.Image)
		}
		for _, port := range s.Ports {
			exposed := map[string]bool{"gateway/8080": true, "api/8081": true}
			if !exposed[fmt.Sprintf("%s/%d", name, port.Target)] {
				t.Errorf("%s publishes port %d", name, port.Target)
			}
			if name == "api" && port.HostIP != "127.0.0.1" {
				t.Errorf("the sync API is published on %q, want the host's loopback only", port.HostIP)
			}
		}
		oneShot := s.Restart == "no"
		if !oneShot && name != "nats" && (s.HealthCheck == nil || s.HealthCheck.Disable) {
			t.Errorf("%s runs without a health check", name)
		}
		if strings.Contains(strings.Join(s.Command, " "), "--name ") && name == "writer" {
			t.Errorf("writer replicas share the name given by --name; leave it to the host name")
		}
	}
	api := p.Services["api"]
	if cmd := strings.Join(api.Command, " "); !strings.Contains(cmd, "--role api --http-listen 0.0.0.0:8081") || api.Environment["DA_ADMIN_TOKEN"] == nil {
		t.Errorf("api: %q %v", cmd, api.Environment)
	}
	df, err := os.ReadFile("../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(df), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "FROM" && !pinned.MatchString(f[1]) {
			t.Errorf("deploy/Dockerfile: %q is not pinned to an exact version or digest", line)
		}
	}
	if b, err := os.ReadFile("../.dockerignore"); err != nil || !strings.Contains(string(b), "**/*.nk") || !strings.Contains(string(b), "**/data") {
		t.Errorf(".dockerignore must keep data and credentials out of the build context: %v", err)
	}
}
