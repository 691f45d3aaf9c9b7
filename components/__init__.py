"""VelaCluster and other component resources (stacking the providers into a cluster)."""
