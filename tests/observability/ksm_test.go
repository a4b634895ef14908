package observability

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

// The CustomResourceStateMetrics fields this config uses, after kube-state-metrics' documentation
// (docs/metrics/extend/customresourcestate-metrics.md). Decoded strictly: an unknown or misspelt
// field fails. This is not kube-state-metrics' own code (its module is not served here), so the
// config is checked for what can be checked without it: its shape, its paths, its values.
type ksmConfig struct {
	Kind string `yaml:"kind"`
	Spec struct {
		Resources []ksmResource `yaml:"resources"`
	} `yaml:"spec"`
}

type ksmResource struct {
	GroupVersionKind struct {
		Group   string `yaml:"group"`
		Version string `yaml:"version"`
		Kind    string `yaml:"kind"`
	} `yaml:"groupVersionKind"`
	MetricNamePrefix *string             `yaml:"metricNamePrefix"`
	LabelsFromPath   map[string][]string `yaml:"labelsFromPath"`
	Metrics          []ksmMetric         `yaml:"metrics"`
}

type ksmMetric struct {
	Name string `yaml:"name"`
	Help string `yaml:"help"`
	Each struct {
		Type  string `yaml:"type"`
		Gauge *struct {
			Path           []string            `yaml:"path"`
			LabelsFromPath map[string][]string `yaml:"labelsFromPath"`
			ValueFrom      []string            `yaml:"valueFrom"`
			NilIsZero      bool                `yaml:"nilIsZero"`
		} `yaml:"gauge"`
		StateSet *struct {
			Path      []string `yaml:"path"`
			LabelName string   `yaml:"labelName"`
			List      []string `yaml:"list"`
		} `yaml:"stateSet"`
		Info *struct {
			Path           []string            `yaml:"path"`
			LabelsFromPath map[string][]string `yaml:"labelsFromPath"`
		} `yaml:"info"`
	} `yaml:"each"`
}

const ksmFile = "deploy/kube-state-metrics/custom-resource-state.yaml"

func loadKSM(t *testing.T) ksmConfig {
	t.Helper()
	var c ksmConfig
	dec := yaml.NewDecoder(bytes.NewReader(mustRead(t, ksmFile)))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("%s: %v", ksmFile, err)
	}
	if c.Kind != "CustomResourceStateMetrics" || len(c.Spec.Resources) == 0 {
		t.Fatalf("%s: kind %q, %d resources", ksmFile, c.Kind, len(c.Spec.Resources))
	}
	return c
}

// metricName is `<metricNamePrefix>_<name>` (the prefix is set explicitly on every resource, so
// the name does not depend on kube-state-metrics' default prefix).
func (r ksmResource) metricName(m ksmMetric) string {
	if *r.MetricNamePrefix == "" {
		return m.Name
	}
	return *r.MetricNamePrefix + "_" + m.Name
}

// ksmFamilies: the metrics the config makes kube-state-metrics expose, with their label names.
func ksmFamilies(t *testing.T) map[string]*family {
	t.Helper()
	out := map[string]*family{}
	for _, r := range loadKSM(t).Spec.Resources {
		if r.MetricNamePrefix == nil {
			t.Fatalf("%s: %s sets no metricNamePrefix", ksmFile, r.GroupVersionKind.Kind)
		}
		for _, m := range r.Metrics {
			labels := append([]string{"customresource_group", "customresource_version", "customresource_kind"}, targetLabels...)
			for l := range r.LabelsFromPath {
				labels = append(labels, l)
			}
			switch {
			case m.Each.Gauge != nil:
				for l := range m.Each.Gauge.LabelsFromPath {
					labels = append(labels, l)
				}
			case m.Each.Info != nil:
				for l := range m.Each.Info.LabelsFromPath {
					labels = append(labels, l)
				}
			case m.Each.StateSet != nil:
				labels = append(labels, m.Each.StateSet.LabelName)
			}
			name := r.metricName(m)
			if out[name] != nil {
				t.Errorf("%s: %s defined twice", ksmFile, name)
			}
			out[name] = newFamily(strings.ToUpper(m.Each.Type), labels...)
		}
	}
	return out
}

// --- CRD schemas ----------------------------------------------------------------------------

type schema struct {
	Type                 string             `yaml:"type"`
	Properties           map[string]*schema `yaml:"properties"`
	Items                *schema            `yaml:"items"`
	AdditionalProperties any                `yaml:"additionalProperties"`
	Enum                 []any              `yaml:"enum"`
}

type crd struct {
	Spec struct {
		Group string `yaml:"group"`
		Names struct {
			Kind string `yaml:"kind"`
		} `yaml:"names"`
		Versions []struct {
			Name   string `yaml:"name"`
			Schema struct {
				OpenAPIV3Schema *schema `yaml:"openAPIV3Schema"`
			} `yaml:"schema"`
		} `yaml:"versions"`
	} `yaml:"spec"`
}

// crdSchemas: group/version/kind → the version's schema, from crds/*.yaml (generated from the Rust types).
func crdSchemas(t *testing.T) map[string]*schema {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "crds/*.yaml"))
	if len(files) == 0 {
		t.Fatal("no crds/*.yaml")
	}
	out := map[string]*schema{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var c crd
		if err := yaml.Unmarshal(b, &c); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, v := range c.Spec.Versions {
			out[c.Spec.Group+"/"+v.Name+"/"+c.Spec.Names.Kind] = v.Schema.OpenAPIV3Schema
		}
	}
	return out
}

var metadataSchema = &schema{Type: "object", Properties: map[string]*schema{
	"name": {Type: "string"}, "namespace": {Type: "string"}, "uid": {Type: "string"},
	"labels": {Type: "object", AdditionalProperties: true}, "annotations": {Type: "object", AdditionalProperties: true},
}}

var keyMatch = regexp.MustCompile(`^\[([^=\]]+)=([^\]]*)\]$`)

// walk resolves a kube-state-metrics path in a schema.
func walk(s *schema, path []string) (*schema, error) {
	for i, seg := range path {
		switch {
		case s == nil:
			return nil, fmt.Errorf("nothing at %v", path[:i])
		case s.Type == "array":
			if _, err := strconv.Atoi(seg); err != nil && !keyMatch.MatchString(seg) {
				return nil, fmt.Errorf("%v is an array: %q is neither an index nor [key=value]", path[:i], seg)
			}
			s = s.Items
		case i == 0 && seg == "metadata":
			s = metadataSchema
		case s.Properties[seg] != nil:
			s = s.Properties[seg]
		case s.AdditionalProperties != nil:
			s = &schema{Type: "string"}
		default:
			return nil, fmt.Errorf("no %q at %v", seg, path[:i])
		}
	}
	return s, nil
}

func scalar(s *schema) bool {
	return s != nil && (s.Type == "string" || s.Type == "integer" || s.Type == "number" || s.Type == "boolean")
}

// Each path a metric reads: (what for, path relative to the resource, must be a scalar).
type use struct {
	what string
	path []string
}

func uses(r ksmResource, m ksmMetric) (base []string, labels []use, value *use) {
	for l, p := range r.LabelsFromPath {
		labels = append(labels, use{"resource label " + l, p})
	}
	rel := func(p []string) []string { return p }
	switch {
	case m.Each.Gauge != nil:
		g := m.Each.Gauge
		base = g.Path
		for l, p := range g.LabelsFromPath {
			labels = append(labels, use{"label " + l, append(append([]string{}, base...), rel(p)...)})
		}
		v := use{"value", append(append([]string{}, base...), g.ValueFrom...)}
		value = &v
	case m.Each.Info != nil:
		base = m.Each.Info.Path
		for l, p := range m.Each.Info.LabelsFromPath {
			labels = append(labels, use{"label " + l, append(append([]string{}, base...), p...)})
		}
	case m.Each.StateSet != nil:
		base = m.Each.StateSet.Path
		v := use{"state", base}
		value = &v
	}
	sort.Slice(labels, func(i, j int) bool { return labels[i].what < labels[j].what })
	return base, labels, value
}

func TestKubeStateMetricsPathsResolveInTheCRDSchemas(t *testing.T) {
	schemas := crdSchemas(t)
	seen := map[string]bool{}
	for _, r := range loadKSM(t).Spec.Resources {
		gvk := r.GroupVersionKind.Group + "/" + r.GroupVersionKind.Version + "/" + r.GroupVersionKind.Kind
		root := schemas[gvk]
		if root == nil {
			t.Errorf("%s: %s is not a kind of crds/*.yaml", ksmFile, gvk)
			continue
		}
		seen[gvk] = true
		for _, m := range r.Metrics {
			if m.Help == "" || m.Name == "" {
				t.Errorf("%s %q: a metric needs a name and a help", gvk, m.Name)
			}
			n := 0
			for _, set := range []bool{m.Each.Gauge != nil, m.Each.Info != nil, m.Each.StateSet != nil} {
				if set {
					n++
				}
			}
			want := map[string]bool{"Gauge": m.Each.Gauge != nil, "Info": m.Each.Info != nil, "StateSet": m.Each.StateSet != nil}
			if n != 1 || !want[m.Each.Type] {
				t.Errorf("%s %s: type %q with %d type blocks", gvk, m.Name, m.Each.Type, n)
			}
			base, labels, value := uses(r, m)
			b, err := walk(root, base)
			if err != nil {
				t.Errorf("%s %s: path %v: %v", gvk, m.Name, base, err)
				continue
			}
			// A path to an array makes one series per element; labels and value are read from the
			// element (walk steps into items for the index segment it is given, so add one).
			itemBase := append([]string{}, base...)
			if b.Type == "array" {
				itemBase = append(itemBase, "0")
			}
			fix := func(p []string) []string {
				if len(p) >= len(base) && b.Type == "array" {
					return append(append([]string{}, itemBase...), p[len(base):]...)
				}
				return p
			}
			for _, l := range labels {
				p := l.path
				if strings.HasPrefix(l.what, "label ") {
					p = fix(p)
				}
				s, err := walk(root, p)
				if err != nil || !scalar(s) {
					t.Errorf("%s %s: %s %v: not a scalar field (%v)", gvk, m.Name, l.what, l.path, err)
				}
			}
			if value != nil {
				s, err := walk(root, fix(value.path))
				if err != nil || !scalar(s) {
					t.Errorf("%s %s: %s %v: not a scalar field (%v)", gvk, m.Name, value.what, value.path, err)
				}
			}
		}
	}
	for gvk := range schemas {
		if !seen[gvk] {
			t.Errorf("%s has no metrics for %s", ksmFile, gvk)
		}
	}
}

// --- captured objects ---------------------------------------------------------------------

// captured: the objects of a kind captured from demo runs (tests/gitops/testdata/<Kind>/), by file.
func captured(t *testing.T, kind string) map[string]map[string]any {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(root, "tests/gitops/testdata", kind, "*.yaml"))
	out := map[string]map[string]any{}
	for _, f := range files {
		base := filepath.Base(f)
		if strings.HasSuffix(base, "_test.yaml") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if obj["kind"] != kind {
			t.Fatalf("%s: kind %v", f, obj["kind"])
		}
		out[base] = obj
	}
	if len(out) == 0 {
		t.Fatalf("no captured %s objects", kind)
	}
	return out
}

// resolve follows a path in an object the way the documentation describes: map keys, list
// indices, `[key=value]` in a list. Missing: nil.
func resolve(v any, path []string) any {
	for _, seg := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[seg]
		case []any:
			if i, err := strconv.Atoi(seg); err == nil {
				if i < 0 || i >= len(x) {
					return nil
				}
				v = x[i]
				continue
			}
			m := keyMatch.FindStringSubmatch(seg)
			if m == nil {
				return nil
			}
			v = nil
			for _, e := range x {
				if em, ok := e.(map[string]any); ok && fmt.Sprint(em[m[1]]) == m[2] {
					v = e
					break
				}
			}
		default:
			return nil
		}
	}
	return v
}

// toFloat: the documented conversion of a gauge value.
func toFloat(v any) (float64, error) {
	switch x := v.(type) {
	case bool:
		if x {
			return 1, nil
		}
		return 0, nil
	case int:
		return float64(x), nil
	case float64:
		return x, nil
	case string:
		switch strings.ToLower(x) {
		case "true", "yes":
			return 1, nil
		case "false", "no", "unknown":
			return 0, nil
		}
		if ts, err := time.Parse(time.RFC3339, x); err == nil {
			return float64(ts.UnixNano()) / 1e9, nil
		}
		if strings.HasSuffix(x, "%") {
			f, err := strconv.ParseFloat(strings.TrimSuffix(x, "%"), 64)
			return f / 100, err
		}
		return strconv.ParseFloat(x, 64)
	}
	return math.NaN(), fmt.Errorf("%T %v is not a gauge value", v, v)
}

type series struct {
	labels map[string]string
	value  float64
}

// seriesOf: what the metric gives for one object (missing paths and unconvertible values are
// errors the caller sees).
func seriesOf(r ksmResource, m ksmMetric, obj map[string]any) ([]series, []string) {
	var errs []string
	common := map[string]string{}
	for l, p := range r.LabelsFromPath {
		if v := resolve(obj, p); v != nil {
			common[l] = fmt.Sprint(v)
		}
	}
	base, _, _ := uses(r, m)
	var elems []any
	switch x := resolve(obj, base).(type) {
	case nil:
		if m.Each.Gauge != nil && m.Each.Gauge.NilIsZero {
			elems = []any{nil}
		}
	case []any:
		elems = x
	default:
		elems = []any{x}
	}
	var out []series
	for _, e := range elems {
		labels := map[string]string{}
		for k, v := range common {
			labels[k] = v
		}
		switch {
		case m.Each.Gauge != nil:
			for l, p := range m.Each.Gauge.LabelsFromPath {
				if v := resolve(e, p); v != nil {
					labels[l] = fmt.Sprint(v)
				}
			}
			v := resolve(e, m.Each.Gauge.ValueFrom)
			if v == nil && m.Each.Gauge.NilIsZero {
				v = 0
			}
			f, err := toFloat(v)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: value %v: %v", m.Name, m.Each.Gauge.ValueFrom, err))
				continue
			}
			out = append(out, series{labels, f})
		case m.Each.Info != nil:
			for l, p := range m.Each.Info.LabelsFromPath {
				if v := resolve(e, p); v != nil {
					labels[l] = fmt.Sprint(v)
				}
			}
			out = append(out, series{labels, 1})
		case m.Each.StateSet != nil:
			found := false
			for _, s := range m.Each.StateSet.List {
				l := map[string]string{m.Each.StateSet.LabelName: s}
				for k, v := range labels {
					l[k] = v
				}
				val := 0.0
				if fmt.Sprint(e) == s {
					val, found = 1, true
				}
				out = append(out, series{l, val})
			}
			if !found {
				errs = append(errs, fmt.Sprintf("%s: %v is %q, not in the list %v", m.Name, base, e, m.Each.StateSet.List))
			}
		}
	}
	return out, errs
}

func TestKubeStateMetricsPathsResolveInCapturedObjects(t *testing.T) {
	total := 0
	for _, r := range loadKSM(t).Spec.Resources {
		kind := r.GroupVersionKind.Kind
		objs := captured(t, kind)
		total += len(objs)
		for _, m := range r.Metrics {
			_, labels, _ := uses(r, m)
			found := map[string]bool{}
			n := 0
			for file, obj := range objs {
				ss, errs := seriesOf(r, m, obj)
				for _, e := range errs {
					t.Errorf("%s/%s: %s", kind, file, e)
				}
				for _, s := range ss {
					n++
					for l := range s.labels {
						found[l] = true
					}
				}
			}
			if n == 0 {
				t.Errorf("%s %s: no series from any of %d captured objects", kind, m.Name, len(objs))
			}
			// Every label path is found in some captured object (a typo never is).
			for _, l := range labels {
				name := strings.TrimPrefix(strings.TrimPrefix(l.what, "resource label "), "label ")
				if !found[name] {
					t.Errorf("%s %s: %s %v is in no captured object", kind, m.Name, l.what, l.path)
				}
			}
			t.Logf("%s %s: %d series from %d captured objects", kind, r.metricName(m), n, len(objs))
		}
	}
	if total < 30 {
		t.Errorf("only %d captured objects", total)
	}
}

// The series a few captured objects give, against what those objects say.
func TestKubeStateMetricsSeriesOfCapturedObjects(t *testing.T) {
	c := loadKSM(t)
	get := func(kind, name string) (ksmResource, ksmMetric) {
		for _, r := range c.Spec.Resources {
			for _, m := range r.Metrics {
				if r.GroupVersionKind.Kind == kind && m.Name == name {
					return r, m
				}
			}
		}
		t.Fatalf("no %s %s", kind, name)
		return ksmResource{}, ksmMetric{}
	}
	value := func(ss []series, want map[string]string) []float64 {
		var out []float64
	next:
		for _, s := range ss {
			for k, v := range want {
				if s.labels[k] != v {
					continue next
				}
			}
			out = append(out, s.value)
		}
		return out
	}
	tenants := captured(t, "Tenant")
	r, m := get("Tenant", "status_condition")
	ss, _ := seriesOf(r, m, tenants["ready.yaml"])
	if v := value(ss, map[string]string{"condition": "Ready", "reason": "Converged", "tenant": "org-02", "namespace": "fleet"}); len(v) != 1 || v[0] != 1 {
		t.Errorf("ready.yaml: Ready series %v in %v", v, ss)
	}
	ss, _ = seriesOf(r, m, tenants["not-serving.yaml"])
	if v := value(ss, map[string]string{"condition": "Ready"}); len(v) != 1 || v[0] != 0 {
		t.Errorf("not-serving.yaml: Ready series %v in %v", v, ss)
	}
	if ss, _ := seriesOf(r, m, tenants["no-status.yaml"]); len(ss) != 0 {
		t.Errorf("no-status.yaml gives condition series %v", ss)
	}
	r, m = get("Tenant", "info")
	ss, _ = seriesOf(r, m, tenants["ready.yaml"])
	if len(ss) != 1 || ss[0].labels["tier"] != "production" || ss[0].labels["running"] != "add4a3622ed2" {
		t.Errorf("ready.yaml info: %v", ss)
	}
	policies := captured(t, "RolloutPolicy")
	r, m = get("RolloutPolicy", "status_phase")
	ss, _ = seriesOf(r, m, policies["halted.yaml"])
	if v := value(ss, map[string]string{"phase": "Halted"}); len(v) != 1 || v[0] != 1 {
		t.Errorf("halted.yaml: %v", ss)
	}
	if v := value(ss, map[string]string{"phase": "Complete"}); len(v) != 1 || v[0] != 0 {
		t.Errorf("halted.yaml: %v", ss)
	}
	r, m = get("RolloutPolicy", "rollout_info")
	ss, _ = seriesOf(r, m, policies["halted.yaml"])
	if len(ss) == 0 || ss[0].labels["phase"] == "" || !strings.HasPrefix(ss[0].labels["digest"], "sha256:") {
		t.Errorf("halted.yaml rollouts: %v", ss)
	}
}

// rolloutPhases: the phases the rollout engine writes (`pub mod phase` in operator/src/core/rollout.rs).
func rolloutPhases(t *testing.T) []string {
	t.Helper()
	src := string(mustRead(t, "operator/src/core/rollout.rs"))
	start := strings.Index(src, "pub mod phase {")
	end := strings.Index(src[start:], "\n}")
	if start < 0 || end < 0 {
		t.Fatal("no `pub mod phase` in operator/src/core/rollout.rs")
	}
	var out []string
	for _, m := range regexp.MustCompile(`pub const [A-Z_]+: &str = "([A-Za-z]+)";`).FindAllStringSubmatch(src[start:start+end], -1) {
		out = append(out, m[1])
	}
	if len(out) < 5 {
		t.Fatalf("phases %v", out)
	}
	return out
}

func TestThePhaseStateSetListsEveryPhaseTheEngineWrites(t *testing.T) {
	_, m := ksmResource{}, ksmMetric{}
	for _, r := range loadKSM(t).Spec.Resources {
		for _, x := range r.Metrics {
			if x.Each.StateSet != nil {
				m = x
			}
		}
	}
	got := append([]string{}, m.Each.StateSet.List...)
	want := rolloutPhases(t)
	sort.Strings(got)
	sort.Strings(want)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("status_phase lists %v; the engine writes %v", got, want)
	}
}
