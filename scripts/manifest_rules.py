"""The deployment rules of docs/deploy.md, checked on deploy/ (after schema validation).

Run by scripts/validate-manifests.sh with the validators' Python (it has PyYAML).
"""

import glob
import re
import sys

import yaml

SECRETS = ["CORTI_CLIENT_SECRET", "SESSION_JWT_SECRET", "AUDIT_HMAC_KEY", "AUDIT_SIGNING_KEY", "TOKEN_CACHE_KEY"]
# Keys mounted from the Secret as files, though not secret themselves.
MOUNTED = SECRETS + ["AUDIT_VERIFIER_KEY"]
# What the production set-up wires, so `serve` starts without a warning.
PRODUCTION = ["AUDIT_SIGNING_KEY_FILE", "TOKEN_CACHE_KEY_FILE", "DENY_LIST_FILE"]
errors = []


def check(cond, msg):
    if not cond:
        errors.append(msg)


def image_user():
    text = open("Dockerfile").read()
    m = re.findall(r"^USER\s+(\d+):(\d+)\s*$", text, re.M)
    check(m, "Dockerfile: no numeric USER uid:gid")
    return (int(m[-1][0]), int(m[-1][1])) if m else (None, None)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def pod_rules(where, pod, uid, gid):
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod securityContext.runAsNonRoot must be true")
    check(psc.get("runAsUser") == uid and psc.get("runAsGroup") == gid,
          f"{where}: pod runs as {psc.get('runAsUser')}:{psc.get('runAsGroup')}, the image's USER is {uid}:{gid}")
    check(pod.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken must be false")
    secret_vols = {v["name"] for v in pod.get("volumes", []) if "secret" in v}
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        name = f"{where}/{c['name']}"
        check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true")
        check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation must be false")
        check(sc.get("privileged") in (None, False), f"{name}: must not be privileged")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: capabilities must drop ALL")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for e in c.get("env", []):
            if e["name"] in SECRETS:
                errors.append(f"{name}: {e['name']} must come from a file ({e['name']}_FILE), not the environment")
            if e["name"].endswith("_FILE") and e["name"][:-5] in MOUNTED:
                path = e.get("value", "")
                mount = next((m for p, m in mounts.items() if path.startswith(p.rstrip("/") + "/")), None)
                check(mount is not None and mount["name"] in secret_vols and mount.get("readOnly") is True,
                      f"{name}: {e['name']}={path} is not in a read-only secret volume")


def kubernetes(uid, gid):
    docs = {}
    for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
        for doc in yaml.safe_load_all(open(path)):
            if doc:
                docs.setdefault(doc["kind"], []).append(doc)
    for kind in ["Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Secret", "Job", "CronJob"]:
        check(kind in docs, f"deploy/kubernetes: no {kind}")
    if errors:
        return
    dep = docs["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    pod_rules("Deployment", pod, uid, gid)
    pod_rules("Job", docs["Job"][0]["spec"]["template"]["spec"], uid, gid)
    c = pod["containers"][0]
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}

    def probe(kind, path):
        http = c.get(kind, {}).get("httpGet", {})
        check(http.get("path") == path, f"Deployment: {kind} must GET {path}")
        check(http.get("port") in ports or http.get("port") in ports.values(),
              f"Deployment: {kind} port {http.get('port')} is not a container port")

    probe("livenessProbe", "/healthz")
    probe("readinessProbe", "/readyz")
    env = {e["name"] for e in c.get("env", [])}
    check("LISTEN_ADDR" in env, "Deployment: LISTEN_ADDR must bind the pod address (0.0.0.0:PORT)")
    for name in PRODUCTION:
        check(name in env, f"Deployment: {name} is not wired")
    secret_keys = set(docs["Secret"][0].get("stringData", {}))
    for volume in pod.get("volumes", []):
        for item in volume.get("secret", {}).get("items", []):
            check(item["key"] in secret_keys, f"Deployment: secret key {item['key']} is not in the Secret")
    for job in docs["CronJob"]:
        where = f"CronJob {job['metadata']['name']}"
        jpod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        pod_rules(where, jpod, uid, gid)
        jenv = {e["name"] for e in jpod["containers"][0].get("env", [])}
        check("DATABASE_URL" in jenv, f"{where}: no DATABASE_URL")
        check("AUDIT_HMAC_KEY_FILE" in jenv or "AUDIT_HMAC_KEY" in jenv, f"{where}: audit commands need AUDIT_HMAC_KEY")
        args = jpod["containers"][0].get("args", [])
        # The service signs checkpoints (AUDIT_SIGNING_KEY), so verify and prune refuse
        # to run without their verifier key.
        if "verify" in args or "prune" in args:
            check("AUDIT_VERIFIER_KEY_FILE" in jenv, f"{where}: audit verify/prune need AUDIT_VERIFIER_KEY_FILE")
        check(not any("$(" in a for a in args), f"{where}: a key expanded into the arguments shows in the process list; use a _FILE setting")
        for volume in jpod.get("volumes", []):
            for item in volume.get("secret", {}).get("items", []):
                check(item["key"] in secret_keys, f"{where}: secret key {item['key']} is not in the Secret")
    check(any("secret" in v for v in pod.get("volumes", [])), "Deployment: no secret volume")
    replicas = dep["spec"].get("replicas", 1)
    check(replicas >= 2, "Deployment: a replicated deployment has at least 2 replicas")
    pdb = docs["PodDisruptionBudget"][0]["spec"]
    check(matches(pdb["selector"]["matchLabels"], labels), "PodDisruptionBudget does not select the pods")
    check(pdb.get("maxUnavailable", 0) < replicas, "PodDisruptionBudget allows every replica down")
    svc = docs["Service"][0]["spec"]
    check(matches(svc["selector"], labels), "Service does not select the pods")
    check(all(p["targetPort"] in ports or p["targetPort"] in ports.values() for p in svc["ports"]),
          "Service targetPort is not a container port")
    np = docs["NetworkPolicy"][0]["spec"]
    check(matches(np["podSelector"]["matchLabels"], labels), "NetworkPolicy does not select the pods")
    check(set(np.get("policyTypes", [])) == {"Ingress", "Egress"}, "NetworkPolicy must restrict Ingress and Egress")
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    # SHUTDOWN_GRACE defaults to 10 s.
    check(pod.get("terminationGracePeriodSeconds", 30) >= sleep + 10,
          "Deployment: terminationGracePeriodSeconds shorter than preStop + SHUTDOWN_GRACE")


def compose(uid, gid):
    doc = yaml.safe_load(open("deploy/compose.yaml"))
    services = doc.get("services", {})
    for name in ["token-vendor", "postgres", "redis"]:
        check(name in services, f"compose: no service {name}")
    if errors:
        return
    tv = services["token-vendor"]
    check(tv.get("user") == f"{uid}:{gid}", f"compose: token-vendor must run as the image's USER {uid}:{gid}")
    check(tv.get("read_only") is True, "compose: token-vendor must have a read-only root filesystem")
    check("ALL" in tv.get("cap_drop", []), "compose: token-vendor must drop ALL capabilities")
    check(any("no-new-privileges" in o for o in tv.get("security_opt", [])), "compose: no-new-privileges missing")
    env = tv.get("environment", {})
    check(str(env.get("DATABASE_URL", "")).startswith("postgres://"), "compose: DATABASE_URL must be PostgreSQL")
    check("RATE_LIMIT_REDIS_URL" in env or "REDIS_URL" in env, "compose: limits must be shared through Redis")
    for name in PRODUCTION:
        check(name in env, f"compose: {name} is not wired")
    for s in SECRETS:
        check(s not in env, f"compose: {s} must come from a secret file ({s}_FILE)")
        path = env.get(f"{s}_FILE")
        if path:
            secret = path.rsplit("/", 1)[-1]
            check(path == f"/run/secrets/{secret}" and secret in tv.get("secrets", []) and secret in doc.get("secrets", {}),
                  f"compose: {s}_FILE={path} is not a declared secret")
    deps = tv.get("depends_on", {})
    check("postgres" in deps and "redis" in deps, "compose: token-vendor must wait for postgres and redis")
    check(not tv.get("healthcheck", {}).get("disable"), "compose: keep the image's HEALTHCHECK")


uid, gid = image_user()
kubernetes(uid, gid)
compose(uid, gid)
for e in errors:
    print(f"[manifest-rules] FAIL: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print("[manifest-rules] deployment rules hold for deploy/kubernetes and deploy/compose.yaml", file=sys.stderr)
