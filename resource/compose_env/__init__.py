"""compose-env: a Concourse resource that runs docker compose against loaded image tarballs."""
