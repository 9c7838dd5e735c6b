"""The rehearsal: run the rendered Kubernetes manifests the way a cluster would, on one machine.

``make rehearse`` (``python -m deploy.rehearse``) renders ``deploy/k8s/overlays/rehearsal``
with ``kubectl kustomize``, creates the Secrets the way ``deploy/k8s/deploy.sh`` does, and
runs every pod as a kubelet would: its own network namespace and address on a bridge, its
containers' rendered commands with exactly their rendered environment and volumes, probes,
restarts, grace periods, Services as iptables DNAT rules, NetworkPolicies as iptables
filter rules. It must run as root. Everything it creates goes away when it stops.
"""
