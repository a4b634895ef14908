// Package observability checks what tenant-operator ships for Prometheus and Grafana against what
// exists: every metric (and label) that an alert rule or a dashboard query names is one the
// operator exposes (testdata/metrics.txt, a scrape of the real binary that the e2e suite compares
// with each fresh scrape) or one that deploy/kube-state-metrics/custom-resource-state.yaml defines;
// and that config's paths resolve in the CRD schemas and in objects captured from real runs.
package observability

import (
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const root = "../.."

// family is what a query may use of a metric: its label names, and the values seen per label.
type family struct {
	kind   string
	labels map[string]map[string]bool
}

func newFamily(kind string, labels ...string) *family {
	f := &family{kind: kind, labels: map[string]map[string]bool{}}
	for _, l := range labels {
		f.labels[l] = map[string]bool{}
	}
	return f
}

// Labels Prometheus' scrape adds to every series of a target (kubernetes_sd with the usual
// relabelling, or a ServiceMonitor).
var targetLabels = []string{"job", "instance", "namespace", "pod", "service", "endpoint", "container"}

// scrapeFamilies reads testdata/metrics.txt with Prometheus' own text parser.
func scrapeFamilies(t *testing.T) map[string]*family {
	t.Helper()
	f, err := os.Open("testdata/metrics.txt")
	if err != nil {
		t.Fatalf("the scrape fixture (kept by the e2e test tests/e2e/image.rs): %v", err)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("testdata/metrics.txt: %v", err)
	}
	out := map[string]*family{}
	for name, mf := range mfs {
		fam := newFamily(mf.GetType().String(), targetLabels...)
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if fam.labels[lp.GetName()] == nil {
					fam.labels[lp.GetName()] = map[string]bool{}
				}
				fam.labels[lp.GetName()][lp.GetValue()] = true
			}
		}
		out[name] = fam
	}
	return out
}

func TestTheScrapeFixtureHasTheOperatorsFamilies(t *testing.T) {
	fams := scrapeFamilies(t)
	names := make([]string, 0, len(fams))
	for n := range fams {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("scrape fixture: %d families: %v", len(names), names)
	// The families the alert rules need; the e2e test keeps the fixture equal to a real scrape.
	for name, kind := range map[string]string{
		"tenant_operator_tenants":               "GAUGE",
		"tenant_operator_rollouts":              "GAUGE",
		"tenant_operator_aws_calls_total":       "COUNTER",
		"tenant_operator_aws_call_errors_total": "COUNTER",
	} {
		if fams[name] == nil || fams[name].kind != kind {
			t.Errorf("no %s %s in testdata/metrics.txt", kind, name)
		}
	}
	// Every phase and every error class has its series from the start.
	if n := len(fams["tenant_operator_rollouts"].labels["phase"]); n != len(rolloutPhases(t)) {
		t.Errorf("the scrape has %d rollout phases, core/rollout.rs %d", n, len(rolloutPhases(t)))
	}
	for _, e := range []string{"throttled", "not_found", "invalid", "access_denied", "other"} {
		if !fams["tenant_operator_aws_call_errors_total"].labels["error"][e] {
			t.Errorf("no error=%q series in the scrape", e)
		}
	}
}

func mustRead(t *testing.T, rel string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, rel))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
