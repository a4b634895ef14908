package observability

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

var promql = parser.NewParser(parser.Options{})

// Labels whose values the operator enumerates (every value has a series in the scrape): a query
// matching one of them on an operator metric must use a value the scrape has.
var enumerated = map[string]bool{"condition": true, "status": true, "phase": true, "error": true, "count": true, "tier": true}

// checker knows the metrics that exist: the operator's (the scrape fixture) and kube-state-metrics'
// (the config).
type checker struct {
	operator, ksm map[string]*family
}

func newChecker(t *testing.T) checker {
	return checker{operator: scrapeFamilies(t), ksm: ksmFamilies(t)}
}

func (c checker) family(name string) *family {
	if f := c.operator[name]; f != nil {
		return f
	}
	return c.ksm[name]
}

// labelsOf: the label names an expression's result may carry (an over-approximation: union over
// the operands), with the problems found on the way.
func (c checker) labelsOf(e parser.Expr, problems *[]string) map[string]bool {
	out := map[string]bool{}
	add := func(m map[string]bool) {
		for k := range m {
			out[k] = true
		}
	}
	switch n := e.(type) {
	case *parser.VectorSelector:
		name := n.Name
		for _, m := range n.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		f := c.family(name)
		if f == nil {
			*problems = append(*problems, fmt.Sprintf("no metric %q in the scrape fixture or the kube-state-metrics config", name))
			return out
		}
		for l := range f.labels {
			out[l] = true
		}
		for _, m := range n.LabelMatchers {
			if m.Name == labels.MetricName {
				continue
			}
			if f.labels[m.Name] == nil {
				*problems = append(*problems, fmt.Sprintf("%s has no label %q", name, m.Name))
				continue
			}
			if c.operator[name] != nil && enumerated[m.Name] && (m.Type == labels.MatchEqual || m.Type == labels.MatchRegexp) {
				ok := false
				for v := range f.labels[m.Name] {
					ok = ok || m.Matches(v)
				}
				if !ok {
					*problems = append(*problems, fmt.Sprintf("%s{%s} matches no value of the scrape", name, m))
				}
			}
		}
	case *parser.MatrixSelector:
		add(c.labelsOf(n.VectorSelector, problems))
	case *parser.SubqueryExpr:
		add(c.labelsOf(n.Expr, problems))
	case *parser.ParenExpr:
		add(c.labelsOf(n.Expr, problems))
	case *parser.UnaryExpr:
		add(c.labelsOf(n.Expr, problems))
	case *parser.StepInvariantExpr:
		add(c.labelsOf(n.Expr, problems))
	case *parser.Call:
		for _, a := range n.Args {
			add(c.labelsOf(a, problems))
		}
	case *parser.AggregateExpr:
		inner := c.labelsOf(n.Expr, problems)
		if n.Param != nil {
			c.labelsOf(n.Param, problems)
		}
		for _, g := range n.Grouping {
			if !inner[g] {
				*problems = append(*problems, fmt.Sprintf("%s by/without %q: no such label under it", n.Op, g))
			}
		}
		if n.Without {
			add(inner)
			for _, g := range n.Grouping {
				delete(out, g)
			}
		} else {
			for _, g := range n.Grouping {
				out[g] = true
			}
		}
	case *parser.BinaryExpr:
		l, r := c.labelsOf(n.LHS, problems), c.labelsOf(n.RHS, problems)
		if vm := n.VectorMatching; vm != nil {
			for _, m := range vm.MatchingLabels {
				if (len(l) > 0 && !l[m]) || (len(r) > 0 && !r[m]) {
					*problems = append(*problems, fmt.Sprintf("on/ignoring %q: not a label of both sides", m))
				}
			}
			for _, m := range vm.Include {
				if !l[m] && !r[m] {
					*problems = append(*problems, fmt.Sprintf("group_left/right %q: no such label", m))
				}
			}
		}
		add(l)
		add(r)
	case *parser.NumberLiteral, *parser.StringLiteral:
	default:
		*problems = append(*problems, fmt.Sprintf("unhandled PromQL node %T", e))
	}
	return out
}

// check parses one query with Prometheus' own parser and returns its problems and metric names.
func (c checker) check(query string) (names []string, result map[string]bool, problems []string) {
	expr, err := promql.ParseExpr(query)
	if err != nil {
		return nil, nil, []string{err.Error()}
	}
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			names = append(names, vs.Name)
		}
		return nil
	})
	result = c.labelsOf(expr, &problems)
	return names, result, problems
}

func TestTheCheckerFindsWhatIsWrong(t *testing.T) {
	c := newChecker(t)
	for query, want := range map[string]string{
		`rate(tenant_operator_aws_calls_totl[5m])`:                                            `no metric "tenant_operator_aws_calls_totl"`,
		`tenant_operator_aws_calls_total{operaton="SendCommand"}`:                             `no label "operaton"`,
		`sum by (operaton) (rate(tenant_operator_aws_calls_total[5m]))`:                       `by/without "operaton"`,
		`tenant_operator_rollouts{phase="Haltd"}`:                                             `matches no value`,
		`tenant_operator_tenants{condition="Redy"}`:                                           `matches no value`,
		`kube_fleet_tenant_status_condition{conditon="Ready"}`:                                `no label "conditon"`,
		`kube_fleet_tenant_info * on (tenant, nope) group_left (tier) kube_fleet_tenant_info`: `on/ignoring "nope"`,
		`sum(`: `parse error`,
	} {
		_, _, problems := c.check(query)
		if !strings.Contains(strings.Join(problems, "; "), want) {
			t.Errorf("%s: want a problem %q, got %v", query, want, problems)
		}
	}
	if _, _, p := c.check(`sum by (operation) (rate(tenant_operator_aws_calls_total{job="x"}[5m]))`); len(p) > 0 {
		t.Errorf("a good query: %v", p)
	}
}

func TestEveryRuleNamesMetricsThatExist(t *testing.T) {
	c := newChecker(t)
	file := root + "/charts/tenant-operator/files/prometheus-rules.yaml"
	groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, promql, slog.Default())
	if len(errs) > 0 {
		t.Fatalf("%v", errs)
	}
	alerts := map[string]bool{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			names, _, problems := c.check(r.Expr)
			for _, p := range problems {
				t.Errorf("rule %s: %s\n%s", r.Alert, p, r.Expr)
			}
			if len(names) == 0 {
				t.Errorf("rule %s names no metric", r.Alert)
			}
			if r.Alert != "" {
				alerts[r.Alert] = true
				if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("rule %s: needs a severity, a summary and a description", r.Alert)
				}
			}
			t.Logf("rule %s: %v", r.Alert, names)
		}
	}
	for _, a := range []string{"TenantOperatorRolloutHalted", "TenantOperatorTenantsNotReady", "TenantOperatorAWSThrottled", "TenantOperatorAgentOffline"} {
		if !alerts[a] {
			t.Errorf("no alert %s", a)
		}
	}
}

type panel struct {
	Title   string  `json:"title"`
	Type    string  `json:"type"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
	} `json:"targets"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
}

// Grafana's own variables and the dashboard's, as Grafana would put them into a query.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "6h", `"$job"`, `"tenant-operator"`)

var labelValues = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
var legendLabel = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)

func TestEveryDashboardQueryNamesMetricsThatExist(t *testing.T) {
	c := newChecker(t)
	var dash struct {
		UID        string  `json:"uid"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(mustRead(t, "deploy/grafana/fleet-dashboard.json"), &dash); err != nil {
		t.Fatal(err)
	}
	queries, used := 0, map[string]bool{}
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q does not use the dashboard's data source variable", p.Title)
			}
			for _, q := range p.Targets {
				queries++
				names, result, problems := c.check(grafanaVars.Replace(q.Expr))
				for _, pr := range problems {
					t.Errorf("panel %q: %s\n%s", p.Title, pr, q.Expr)
				}
				for _, n := range names {
					used[n] = true
				}
				for _, m := range legendLabel.FindAllStringSubmatch(q.LegendFormat, -1) {
					if result != nil && !result[m[1]] {
						t.Errorf("panel %q: legend {{%s}} is not a label of %s", p.Title, m[1], q.Expr)
					}
				}
			}
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(map[string]any)
		m := labelValues.FindStringSubmatch(fmt.Sprint(q["query"]))
		if m == nil {
			t.Errorf("variable %s: %v is not label_values(metric, label)", v.Name, v.Query)
			continue
		}
		if f := c.family(m[1]); f == nil || f.labels[m[2]] == nil {
			t.Errorf("variable %s: no metric %s with label %s", v.Name, m[1], m[2])
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("%d dashboard queries over %d metrics: %v", queries, len(names), names)
	// What the dashboard is for: fleet by digest, tier and Ready; rollout progress; failures; AWS
	// calls by operation.
	for _, want := range []string{"kube_fleet_tenant_info", "kube_fleet_tenant_status_condition", "tenant_operator_rollout_tenants",
		"tenant_operator_rollouts", "tenant_operator_commands_total", "tenant_operator_aws_calls_total", "tenant_operator_aws_call_errors_total"} {
		if !used[want] {
			t.Errorf("no dashboard query reads %s", want)
		}
	}
}
