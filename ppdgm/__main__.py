from ppdgm.cli.main import main
from ppdgm.runtime.distributed import exit_job

exit_job(main())
