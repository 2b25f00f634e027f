"""Code that more than one MyoTriage service uses: config, database, schemas, errors, logging."""
