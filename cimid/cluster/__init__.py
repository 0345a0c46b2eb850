"""Federation, node side: the etcd client wrapper, the node's registration under a lease, its self-fence."""
