"""llmtrain's local Kubernetes test bed.

Real control-plane binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) run as local
processes, and a small Python kubelet runs pods as processes in network namespaces. Only the container
runtime and the pod network are replaced; see testbed/README.md.

    PYTHONPATH=testbed python -m llmtrain_testbed up|down|status
"""
