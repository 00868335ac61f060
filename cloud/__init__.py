"""draftlink cloud: the verifier service (gRPC), its sessions and the target model worker."""
