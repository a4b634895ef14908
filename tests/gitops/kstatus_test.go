package gitops

import (
	"sort"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// kstatusTable is the verdict of kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the
// rules behind Flux's healthChecks and wait) on each captured object: KIND/FILE -> status. The
// README states the same table; change both together.
var kstatusTable = map[string]status.Status{
	"Tenant/no-status.yaml":                   status.CurrentStatus,
	"Tenant/target-only.yaml":                 status.CurrentStatus,
	"Tenant/observing.yaml":                   status.InProgressStatus,
	"Tenant/not-serving.yaml":                 status.InProgressStatus,
	"Tenant/progressing.yaml":                 status.InProgressStatus,
	"Tenant/ready.yaml":                       status.CurrentStatus,
	"Tenant/held.yaml":                        status.CurrentStatus,
	"Tenant/spec-not-observed.yaml":           status.InProgressStatus,
	"Tenant/suspended.yaml":                   status.InProgressStatus,
	"Tenant/secret-not-found.yaml":            status.FailedStatus,
	"Tenant/instance-not-found.yaml":          status.FailedStatus,
	"ImageChannel/no-status.yaml":             status.CurrentStatus,
	"ImageChannel/resolved.yaml":              status.CurrentStatus,
	"ImageChannel/awaiting-promotion.yaml":    status.InProgressStatus,
	"ImageChannel/promoted.yaml":              status.CurrentStatus,
	"ImageChannel/tag-not-found.yaml":         status.InProgressStatus,
	"ImageChannel/digest-rejected.yaml":       status.CurrentStatus,
	"ImageChannel/pull-secret-invalid.yaml":   status.FailedStatus,
	"RolloutPolicy/no-status.yaml":            status.CurrentStatus,
	"RolloutPolicy/canary.yaml":               status.InProgressStatus,
	"RolloutPolicy/soaking.yaml":              status.InProgressStatus,
	"RolloutPolicy/production.yaml":           status.InProgressStatus,
	"RolloutPolicy/paused.yaml":               status.InProgressStatus,
	"RolloutPolicy/complete.yaml":             status.CurrentStatus,
	"RolloutPolicy/halted.yaml":               status.FailedStatus,
	"RolloutPolicy/halted-after-retry.yaml":   status.FailedStatus,
	"RolloutPolicy/complete-after-abort.yaml": status.CurrentStatus,
	"RolloutPolicy/waiting-for-canaries.yaml": status.FailedStatus,
	"RolloutPolicy/aborted.yaml":              status.CurrentStatus,
	"RolloutPolicy/emergency.yaml":            status.InProgressStatus,
}

func TestKstatus(t *testing.T) {
	keys := make([]string, 0, len(kstatusTable))
	for k := range kstatusTable {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if len(keys) == 0 {
		t.Fatal("the kstatus table is empty")
	}
	for _, key := range keys {
		want := kstatusTable[key]
		t.Run(key, func(t *testing.T) {
			kind, file := splitKey(key)
			res, err := status.Compute(&unstructured.Unstructured{Object: load(t, kind, file)})
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != want {
				t.Errorf("kstatus says %s (%s), the table says %s", res.Status, res.Message, want)
			}
		})
	}
}

func splitKey(key string) (string, string) {
	for i := range key {
		if key[i] == '/' {
			return key[:i], key[i+1:]
		}
	}
	return key, ""
}
