from ppdgm.cli import main
from ppdgm.distributed import exit_job

exit_job(main())
